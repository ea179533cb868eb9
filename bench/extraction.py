"""Main-text extraction on the 181 bundled pages with human ground truth: both extractors side by side.

    python bench/extraction.py [--rounds 3] [--json bench/results/extraction-DATE.json]

Each page goes through pipelines.extract (trafilatura, then resiliparse) and pipelines.clean
(ftfy); the text is scored against data/sample/ground-truth.json with bag-of-words precision,
recall and F1, averaged over pages as the article-extraction benchmark does (reference: its
published F1 for trafilatura, 0.958). Speed: pages/s and MB/s of HTML, the extractors timed in
alternating rounds so that load on the machine falls on both alike; the table gives the ratio.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipelines.clean import clean_text  # noqa: E402
from pipelines.extract import EXTRACTORS, extract_html, word_scores  # noqa: E402

PUBLISHED_F1 = 0.958


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed passes over the pages, per extractor")
    parser.add_argument("--json", default=str(ROOT / f"bench/results/extraction-{date.today()}.json"))
    args = parser.parse_args()
    truth = json.loads((ROOT / "data/sample/ground-truth.json").read_text())
    pages = {key: gzip.decompress((ROOT / "data/sample/html" / f"{key}.html.gz").read_bytes())
             for key in sorted(truth)}
    megabytes = sum(map(len, pages.values())) / 1e6
    results = {}
    for extractor in EXTRACTORS:
        texts = {key: clean_text(extract_html(html, extractor=extractor).text) for key, html in pages.items()}
        scores = [word_scores(text, truth[key]["articleBody"]) for key, text in texts.items()]
        precision, recall, f1 = (sum(s[i] for s in scores) / len(scores) for i in range(3))
        results[extractor] = {"precision": precision, "recall": recall, "f1": f1, "seconds": []}
    for _ in range(args.rounds):
        for extractor in EXTRACTORS:
            t = time.perf_counter()
            for html in pages.values():
                extract_html(html, extractor=extractor)
            results[extractor]["seconds"].append(time.perf_counter() - t)
    print(f"{len(pages)} pages, {megabytes:.1f} MB of HTML; best of {args.rounds} alternating rounds")
    print(f"{'extractor':<13}{'precision':>10}{'recall':>8}{'F1':>7}{'pages/s':>9}{'MB/s':>7}{'speed':>7}")
    for extractor, r in results.items():
        r["pages_per_s"] = len(pages) / min(r["seconds"])
        r["mb_per_s"] = megabytes / min(r["seconds"])
        r["speed_vs_trafilatura"] = r["pages_per_s"] / results["trafilatura"]["pages_per_s"]
        print(f"{extractor:<13}{r['precision']:>10.3f}{r['recall']:>8.3f}{r['f1']:>7.3f}{r['pages_per_s']:>9.1f}"
              f"{r['mb_per_s']:>7.2f}{r['speed_vs_trafilatura']:>6.2f}x")
    print(f"published F1 for trafilatura: {PUBLISHED_F1}")
    out = {"pages": len(pages), "megabytes": megabytes, "published_f1": PUBLISHED_F1, "extractors": results}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
