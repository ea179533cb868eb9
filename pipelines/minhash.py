"""MinHash signatures of documents' word 5-gram sets, numpy-vectorised.

A document's shingles are its word n-grams (pipelines/ngrams.py: normalised words hashed in a
compiled loop, combined in numpy, no per-shingle Python call). Permutation j maps the low 32 bits h of a
shingle hash to a_j * h + b_j mod 2^32 with a_j odd, a bijection of 32-bit values; the signature
keeps each permutation's minimum (uint32: half the memory traffic of 64-bit values, and two
different minima collide with odds 2^-32). Two documents agree on a permutation with probability
equal to the Jaccard similarity of their shingle sets. datasketch's MinHash computes the same
estimator but hashes each shingle with a Python call (SHA-1 by default); bench/minhash.py
compares the two.
"""

from __future__ import annotations

import numpy as np

from pipelines.ngrams import combine, word_hashes_each

_CHUNK = 2048  # shingles a pass: bounds the (shingles x permutations) buffer to 1 MB at 128


class MinHasher:
    """Signatures of `num_perm` uint32 values from word `shingle`-grams, fixed by `seed`."""

    def __init__(self, num_perm: int = 128, shingle: int = 5, seed: int = 1):
        if num_perm < 1 or shingle < 1:
            raise ValueError(f"MinHash needs num_perm >= 1 and shingle >= 1, got {num_perm}, {shingle}")
        rng = np.random.default_rng(seed)
        self.num_perm, self.shingle = num_perm, shingle
        self.a = rng.integers(0, 2**31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
        self.b = rng.integers(0, 2**32, num_perm, dtype=np.uint32)
        self._buf = np.empty((_CHUNK, num_perm), np.uint32)

    def signature(self, text: str) -> np.ndarray | None:
        """The document's signature, or None when it has no words to compare."""
        return self.signatures([text])[0]

    def signatures(self, texts: list[str]) -> list[np.ndarray | None]:
        """The signature of each text (their words hashed a batch at a time)."""
        return [self._signature(shingles(words, self.shingle)) for words in word_hashes_each(texts)]

    def _signature(self, shingles: np.ndarray) -> np.ndarray | None:
        if not len(shingles):
            return None
        # repeated shingles change no minimum, so they are not removed (np.unique cost more than them)
        sig = np.full(self.num_perm, np.iinfo(np.uint32).max, dtype=np.uint32)
        for lo in range(0, len(shingles), _CHUNK):
            chunk = shingles[lo : lo + _CHUNK, None]
            buf = self._buf[: len(chunk)]
            np.multiply(chunk, self.a, out=buf)  # uint32 arithmetic wraps: mod 2^32
            buf += self.b
            np.minimum(sig, buf.min(axis=0), out=sig)
        return sig


def shingles(words: np.ndarray, n: int) -> np.ndarray:
    """The 32-bit hashes of a text's word n-gram shingles from its word hashes, in order, repeats
    included (a text shorter than n words is one shingle of all its words; no words, none)."""
    if not len(words):
        return np.empty(0, np.uint32)
    return combine(words, min(n, len(words))).astype(np.uint32)


def shingle_sets(texts: list[str], n: int) -> list[np.ndarray]:
    """The sorted set of each text's shingle hashes: the sets whose Jaccard similarity the
    signatures (of shingle size n) estimate."""
    return [np.unique(shingles(words, n)) for words in word_hashes_each(texts)]


def jaccard_estimate(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b))


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """The exact Jaccard similarity of two sorted sets (shingle_sets's)."""
    common = len(np.intersect1d(a, b, assume_unique=True))
    union = len(a) + len(b) - common
    return common / union if union else 0.0
