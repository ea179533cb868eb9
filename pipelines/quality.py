"""Train GPT-3's quality classifier: reference documents against raw crawl.

    python -m pipelines.quality train --positive data/webtext books.jsonl \
        --negative crawl/CC-MAIN-2024-10/wet/ --output quality.npz
    python -m pipelines.build ... --quality quality.npz [--quality-alpha 9 | --quality-threshold 0.5]

Inputs are anything a build reads (HTML, text, JSON lines, WARC / WET, parquet: pipelines/sources.py)
or a shard folder written by pipelines.build (decoded with its tokenizer: a built WebText corpus is
the natural positive side). HTML is extracted and every text cleaned as the build does, and texts
shorter than --min-chars are left out (the build drops them before scoring), so the classifier learns
from what it will be asked to score. At most --max-documents a side are read, in input order.

Documents go to the validation part by a seeded hash of their text (never by position), the
classifier is logistic regression (scikit-learn, L2, lbfgs) on the hashed features of
pipelines/quality_model.py, and the validation ROC AUC is printed and written beside the model as
MODEL.json. scikit-learn is used here only: a build scores with numpy.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from megagpt.formats.shards import MANIFEST_NAME
from pipelines.clean import clean_text
from pipelines.extract import EXTRACTORS, extract_html
from pipelines.overlap import iter_texts
from pipelines.quality_model import QualityModel
from pipelines.sources import list_inputs, read_documents

log = logging.getLogger("pipelines.quality")
_TEXTS_A_BLOCK = 1024


def read_texts(paths: Sequence[str | Path], limit: int, min_chars: int = 200, text_field: str = "text",
               extractor: str = "trafilatura") -> list[str]:
    """Up to `limit` cleaned texts of at least `min_chars` from `paths`, in input order."""
    texts: list[str] = []
    for path in paths:
        for text in _path_texts(Path(path), text_field, extractor):
            if len(text) >= min_chars:
                texts.append(text)
                if len(texts) == limit:
                    return texts
    return texts


def _path_texts(path: Path, text_field: str, extractor: str) -> Iterator[str]:
    if (path / MANIFEST_NAME).is_file():  # a built corpus: its text is already clean
        yield from iter_texts(path)
        return
    skipped: Counter = Counter()
    for raw in read_documents(list_inputs([path]), skipped, text_field):
        text = extract_html(raw.content, raw.url, raw.charset, extractor).text if raw.is_html else raw.content
        yield clean_text(text)
    if skipped:
        log.warning("%s: skipped %s", path, dict(skipped))


def is_validation(text: str, fraction: float, seed: int) -> bool:
    """A text's side by a seeded hash of it: the same text always lands on the same side."""
    h = hashlib.blake2b(f"{seed}:{text}".encode(), digest_size=8).digest()
    return int.from_bytes(h) / 2**64 < fraction


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the chance a random positive outscores a random negative (ties 1/2)."""
    from scipy.stats import rankdata

    ranks = rankdata(scores)  # Mann-Whitney U from average ranks
    positives = int(labels.sum())
    negatives = len(labels) - positives
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _matrix(model: QualityModel, texts: list[str]) -> Any:
    """The texts' features as one sparse matrix, built a block at a time: the sort that counts a
    block's n-grams needs several times the block's entries, the finished rows only 8 bytes each."""
    from scipy.sparse import csr_matrix, vstack

    blocks = []
    for start in range(0, len(texts), _TEXTS_A_BLOCK):
        f = model.features(texts[start : start + _TEXTS_A_BLOCK])
        blocks.append(csr_matrix((f.values, (f.docs, f.buckets)), shape=(f.documents, 1 << model.bits)))
    return vstack(blocks, format="csr")


def train(positives: list[str], negatives: list[str], *, ngrams: Sequence[int] = (1, 2), bits: int = 20,
          c: float = 4.0, valid_fraction: float = 0.1, seed: int = 0) -> tuple[QualityModel, dict[str, Any]]:
    """A classifier of positives against negatives, and its report (sizes, train and validation AUC)."""
    from sklearn.linear_model import LogisticRegression

    texts = positives + negatives
    labels = np.array([1] * len(positives) + [0] * len(negatives), np.int8)
    held = np.array([is_validation(t, valid_fraction, seed) for t in texts], bool)
    sides = {"train": ~held, "validation": held}
    for side, mask in sides.items():
        if len(set(labels[mask].tolist())) < 2:
            raise ValueError(f"the {side} part has documents of one class only ({int(labels[mask].sum())} "
                             f"positive of {int(mask.sum())}); give more documents of each side")
    x = _matrix(QualityModel(np.zeros(1 << bits, np.float32), 0.0, tuple(ngrams), bits, {}), texts)
    started = time.perf_counter()
    fit = LogisticRegression(C=c, max_iter=1000).fit(x[sides["train"]], labels[sides["train"]])
    seconds = time.perf_counter() - started
    report: dict[str, Any] = {"ngrams": list(ngrams), "bits": bits, "C": c, "seed": seed,
                              "valid_fraction": valid_fraction, "fit_seconds": round(seconds, 2)}
    for side, mask in sides.items():
        scores = fit.decision_function(x[mask])
        report[side] = {"positive": int(labels[mask].sum()), "negative": int((1 - labels[mask]).sum()),
                        "auc": roc_auc(labels[mask], scores)}
    weights = fit.coef_[0].astype(np.float32)
    return QualityModel(weights, float(fit.intercept_[0]), tuple(ngrams), bits, report), report


def _train_command(args: argparse.Namespace) -> int:
    output = Path(args.output)
    if output.suffix != ".npz":
        raise ValueError(f"--output {output}: name the model MODEL.npz (its report goes to MODEL.json)")
    read = {"min_chars": args.min_chars, "text_field": args.text_field, "extractor": args.extractor}
    positives = read_texts(args.positive, args.max_documents, **read)
    negatives = read_texts(args.negative, args.max_documents, **read)
    log.info("read %d positive and %d negative documents", len(positives), len(negatives))
    model, report = train(positives, negatives, ngrams=args.ngrams, bits=args.bits, c=args.c,
                          valid_fraction=args.valid_fraction, seed=args.seed)
    report["inputs"] = {"positive": list(args.positive), "negative": list(args.negative)}
    dataclasses.replace(model, info=report).save(output)
    output.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    for side in ("train", "validation"):
        r = report[side]
        print(f"{side:<10} {r['positive']:>8} positive {r['negative']:>8} negative  AUC {r['auc']:.4f}")
    print(f"wrote {output} and {output.with_suffix('.json')}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.quality", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    t = commands.add_parser("train", help="train a classifier of reference documents against raw crawl")
    t.add_argument("--positive", nargs="+", required=True, metavar="REF",
                   help="reference documents: inputs a build reads, or a built corpus's shard folder")
    t.add_argument("--negative", nargs="+", required=True, metavar="RAW", help="raw crawl (e.g. WET files)")
    t.add_argument("--output", required=True, metavar="MODEL.npz")
    t.add_argument("--max-documents", type=int, default=100_000, help="a side at most (default 100000)")
    t.add_argument("--min-chars", type=int, default=200, help="leave out shorter texts, as the build does")
    t.add_argument("--text-field", default="text", help="of .jsonl lines and .parquet columns")
    t.add_argument("--extractor", choices=EXTRACTORS, default="trafilatura", help="for HTML inputs")
    t.add_argument("--ngrams", type=int, nargs="+", default=[1, 2], help="word n-gram sizes (default 1 2)")
    t.add_argument("--bits", type=int, default=20, choices=range(10, 27), metavar="{10..26}",
                   help="2^bits hashed features (default 20: 4 MiB of weights)")
    t.add_argument("-C", dest="c", type=float, default=4.0, help="inverse L2 strength (default 4)")
    t.add_argument("--valid-fraction", type=float, default=0.1, help="held out for the AUC (default 0.1)")
    t.add_argument("--seed", type=int, default=0, help="seeds the validation split")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return _train_command(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"pipelines.quality: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
