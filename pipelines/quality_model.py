"""GPT-3's quality classifier as a build uses it: hashed word n-gram features, the model file, the
score of a document and the rule that keeps it.

Features: the document's normalised words (pipelines/ngrams.py, the same words and stable hashes
as dedup and the overlap check) and their n-grams for each size in `ngrams` (default 1 and 2),
each hashed into one of 2^bits buckets by its top bits. A bucket's value is 1 + ln(count), and a
document's vector has unit length: a page that repeats one phrase a hundred times (the spam the
filter is for) weighs no more than one that says it once, and long and short documents score on
one scale. The score is logistic regression on that vector, sigmoid(w . x + b): the probability
the document is from the reference corpora rather than from the raw crawl.

Keeping (GPT-3, appendix A): a document is kept when `np.random.pareto(alpha) > 1 - score`, so most
low scores go and a few survive for diversity. numpy's pareto is the Lomax distribution, whose
survival function is (1 + x)^-alpha; for a score s in [0, 1] the chance of keeping is therefore
(2 - s)^-alpha: 1 at s = 1, 0.19 at s = 0.8 and 2^-9 = 0.002 at s = 0 for alpha = 9. The draw comes
from a generator seeded by the build's seed and the document's text digest, so a document's fate
does not depend on input order, number of ranks or a resumed build. With a threshold instead, a
document is kept when its score is at least the threshold.

Scoring needs numpy only; training (pipelines/quality.py) uses scikit-learn, which a build never
imports.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "megagpt-quality-1"
_DOCS_A_BATCH = 512  # documents hashed together: the numpy work is paid once a batch
_PARETO_STREAM = 0x9A1E7  # keeps these draws apart from any other use of the build's seed
TRAIN_HINT = ("train one with python -m pipelines.quality train --positive REF... --negative RAW... "
              "--output MODEL.npz")


@dataclass(frozen=True)
class Features:
    """Sparse document vectors: entry i is `values[i]` at (row `docs[i]`, column `buckets[i]`)."""

    docs: np.ndarray  # int64, sorted
    buckets: np.ndarray  # int64
    values: np.ndarray  # float32
    documents: int


def hashed_features(texts: Sequence[str], ngrams: Sequence[int], bits: int) -> Features:
    """The unit-length, log-count vectors of `texts` (see the module docstring)."""
    # here, not at the top: a build without --quality imports this module but needs no compiled code
    from pipelines.ngrams import ngram_hashes_batch

    rows, cols = [], []
    shift = np.uint64(64 - bits)
    for n in ngrams:
        hashes, counts = ngram_hashes_batch(list(texts), n)
        rows.append(np.repeat(np.arange(len(texts), dtype=np.int64), counts))
        cols.append((hashes >> shift).astype(np.int64))
    # one entry a (document, bucket): counting pairs sorts them by document, then bucket
    pairs, counts = np.unique(np.concatenate(rows) << bits | np.concatenate(cols), return_counts=True)
    docs, buckets = pairs >> bits, pairs & ((1 << bits) - 1)
    values = 1.0 + np.log(counts)
    norms = np.sqrt(np.bincount(docs, values * values, minlength=len(texts)))
    return Features(docs, buckets, (values / norms[docs]).astype(np.float32), len(texts))


@dataclass(frozen=True)
class QualityModel:
    weights: np.ndarray  # float32, one a bucket
    bias: float
    ngrams: tuple[int, ...]
    bits: int
    info: dict[str, Any]  # how it was trained: inputs, documents, validation AUC

    def features(self, texts: Sequence[str]) -> Features:
        return hashed_features(texts, self.ngrams, self.bits)

    def decision(self, features: Features) -> np.ndarray:
        """w . x + b of each document (float64)."""
        dots = features.values.astype(np.float64) * self.weights[features.buckets]
        return np.bincount(features.docs, dots, minlength=features.documents) + self.bias

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """The probability that each text is from the reference corpora, float64 in (0, 1)."""
        parts = [self.decision(self.features(texts[i : i + _DOCS_A_BATCH]))
                 for i in range(0, len(texts), _DOCS_A_BATCH)]
        z = np.concatenate(parts) if parts else np.empty(0)
        return 1.0 / (1.0 + np.exp(-z))

    def save(self, path: str | Path) -> None:
        """Write the model to `path` (.npz) under a temporary name, then rename."""
        path = Path(path)
        header = {"format": FORMAT, "ngrams": list(self.ngrams), "bits": self.bits, "info": self.info}
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("wb") as f:  # a file object: np.savez would append .npz to a name
            np.savez(f, weights=self.weights.astype(np.float32), bias=np.float64(self.bias),
                     header=np.array(json.dumps(header)))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> QualityModel:
        """The model in `path`; a missing or foreign file is an error naming it and the fix."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"--quality {path} does not exist; {TRAIN_HINT}")
        try:
            with np.load(path, allow_pickle=False) as data:
                header = json.loads(str(data["header"]))
                weights, bias = data["weights"], float(data["bias"])
        except (OSError, ValueError, KeyError, EOFError) as err:
            raise ValueError(f"--quality {path} is not a quality model ({err}); {TRAIN_HINT}") from None
        if header.get("format") != FORMAT or weights.shape != (1 << header["bits"],):
            raise ValueError(f"--quality {path}: format {header.get('format')!r} with {weights.shape} "
                             f"weights, expected {FORMAT} with 2^bits; {TRAIN_HINT}")
        return cls(weights, bias, tuple(header["ngrams"]), header["bits"], header.get("info", {}))


def file_sha256(path: str | Path) -> str:
    """What a continued build compares: a retrained model at the same path redoes the scores."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def pareto_draw(digest: bytes, seed: int, alpha: float) -> float:
    """np.random.pareto(alpha) from a generator seeded by the build's seed and the document's digest."""
    rng = np.random.default_rng([_PARETO_STREAM, seed % (1 << 64), int.from_bytes(digest, "little")])
    return float(rng.pareto(alpha))


def keep(scores: np.ndarray, digests: np.ndarray, seed: int, alpha: float,
         threshold: float | None = None) -> np.ndarray:
    """Which documents stay: score >= threshold when one is given, else GPT-3's Pareto rule."""
    if threshold is not None:
        return scores >= threshold
    draws = np.array([pareto_draw(d.tobytes(), seed, alpha) for d in digests], np.float64)
    return draws > 1.0 - scores
