"""How accurate and how fast is each main-text extractor on the 181 bundled pages with ground truth?

    python -m bench.extraction [--rounds 3] [--json bench/results/extraction-DATE.json]

Each page goes through pipelines.extract (trafilatura, then resiliparse) and pipelines.clean
(ftfy); the text is scored against data/sample/ground-truth.json with bag-of-words precision,
recall and F1, averaged over pages as the article-extraction benchmark does (reference: its
published F1 for trafilatura, 0.958). Speed: pages/s and MB/s of HTML, the extractors timed in
alternating rounds so that load on the machine falls on both alike; the table gives the ratio.
"""

from __future__ import annotations

import gzip
import json
import time
from typing import Any

from bench import harness
from bench.harness import ROOT
from pipelines.clean import clean_text
from pipelines.extract import EXTRACTORS, extract_html, word_scores

PUBLISHED_F1 = 0.958


def scores(pages: dict[str, bytes], truth: dict) -> dict[str, dict]:
    """Precision, recall and F1 of each extractor, averaged over pages."""
    results = {}
    for extractor in EXTRACTORS:
        texts = {key: clean_text(extract_html(html, extractor=extractor).text) for key, html in pages.items()}
        each = [word_scores(text, truth[key]["articleBody"]) for key, text in texts.items()]
        precision, recall, f1 = (sum(s[i] for s in each) / len(each) for i in range(3))
        results[extractor] = {"precision": precision, "recall": recall, "f1": f1, "seconds": []}
    return results


def summarize(settings: dict[str, Any], figures: dict[str, Any]) -> harness.Result:
    """The harness result of a run: `figures` holds pages, megabytes and each extractor's scores and
    seconds a round."""
    results = figures["extractors"]
    table = harness.Table(["extractor", "precision", "recall", "F1", "pages/s", "MB/s", "speed"])
    for extractor, r in results.items():
        best = min(r["seconds"])
        r["pages_per_s"] = figures["pages"] / best
        r["mb_per_s"] = figures["megabytes"] / best if figures.get("megabytes") else None
        r["speed_vs_trafilatura"] = r["pages_per_s"] / results["trafilatura"]["pages_per_s"]
        table.add(extractor, *(round(r[k], 3) for k in ("precision", "recall", "f1")),
                  round(r["pages_per_s"], 1), r["mb_per_s"] and round(r["mb_per_s"], 2),
                  f"{r['speed_vs_trafilatura']:.2f}x")
    return harness.Result(
        question=harness.question_of(__doc__), settings=settings, figures=figures, table=table,
        reference=f"the article-extraction benchmark's published F1 for trafilatura, {PUBLISHED_F1}; "
                  "speed against trafilatura in the same run")


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="timed passes over the pages, per extractor")
    args = parser.parse_args()
    truth = json.loads((ROOT / "data/sample/ground-truth.json").read_text())
    pages = {key: gzip.decompress((ROOT / "data/sample/html" / f"{key}.html.gz").read_bytes())
             for key in sorted(truth)}
    results = scores(pages, truth)
    for _ in range(args.rounds):
        for extractor in EXTRACTORS:
            t = time.perf_counter()
            for html in pages.values():
                extract_html(html, extractor=extractor)
            results[extractor]["seconds"].append(time.perf_counter() - t)
    settings = {"rounds": args.rounds, "pages": "data/sample/html against data/sample/ground-truth.json"}
    figures = {"pages": len(pages), "megabytes": sum(map(len, pages.values())) / 1e6,
               "published_f1": PUBLISHED_F1, "extractors": results}
    harness.report("extraction", summarize(settings, figures), args.json)


if __name__ == "__main__":
    main()
