"""Main-text extraction quality on the 181 bundled pages with human ground truth.

    python bench/extraction.py [--json bench/results/extraction-DATE.json]

Each page goes through pipelines.extract (trafilatura) and pipelines.clean (ftfy); the text is
scored against data/sample/ground-truth.json with bag-of-words precision, recall and F1, averaged
over pages as the article-extraction benchmark does. Reference: the benchmark's published F1 for
trafilatura, 0.958.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from datetime import date
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipelines.clean import clean_text  # noqa: E402
from pipelines.extract import extract_html, word_scores  # noqa: E402

PUBLISHED_F1 = 0.958


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=str(ROOT / f"bench/results/extraction-{date.today()}.json"))
    args = parser.parse_args()
    truth = json.loads((ROOT / "data/sample/ground-truth.json").read_text())
    scores = []
    t = time.perf_counter()
    for key in tqdm(sorted(truth), desc="extract", unit="page"):
        html = gzip.decompress((ROOT / "data/sample/html" / f"{key}.html.gz").read_bytes())
        scores.append(word_scores(clean_text(extract_html(html).text), truth[key]["articleBody"]))
    seconds = time.perf_counter() - t
    precision, recall, f1 = (sum(s[i] for s in scores) / len(scores) for i in range(3))
    print(f"{len(scores)} pages: precision {precision:.3f}  recall {recall:.3f}  F1 {f1:.3f} "
          f"(published for trafilatura: {PUBLISHED_F1}; ratio {f1 / PUBLISHED_F1:.3f}); {seconds:.1f} s")
    out = {"pages": len(scores), "precision": precision, "recall": recall, "f1": f1,
           "published_f1": PUBLISHED_F1, "seconds": seconds}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
