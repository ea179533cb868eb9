"""Duplicate decisions over documents in their global order: the first copy stays, later ones go.

Exact duplicates share the hash of their normalised text (case and whitespace folded). Near
duplicates are found with MinHash LSH: signatures cut into b bands of r values, documents sharing
a band's values are candidates, and a candidate pair is a duplicate when the signatures' estimated
Jaccard similarity reaches the threshold. (b, r) is chosen, as datasketch does, to minimise the
false-positive plus false-negative probability mass around the threshold. Both functions only see
keys and signatures, so the decisions are made once, on one rank, for the whole corpus.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from pipelines.minhash import jaccard_estimate


def exact_duplicates(digests: Sequence[str]) -> list[bool]:
    """True for each document whose digest an earlier document already had."""
    seen: set[str] = set()
    duplicate = []
    for digest in digests:
        duplicate.append(digest in seen)
        seen.add(digest)
    return duplicate


@lru_cache(maxsize=32)
def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm minimising the error mass around `threshold`."""
    if not 0 < threshold <= 1:
        raise ValueError(f"near-duplicate threshold {threshold} must be in (0, 1]")
    s = np.linspace(0, 1, 1001)
    best = None
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            candidate = 1 - (1 - s**rows) ** bands
            false_pos = np.trapezoid(np.where(s < threshold, candidate, 0), s)
            false_neg = np.trapezoid(np.where(s >= threshold, 1 - candidate, 0), s)
            if best is None or false_pos + false_neg < best[0]:
                best = (false_pos + false_neg, bands, rows)
    return best[1], best[2]


def near_duplicates(signatures: Sequence[np.ndarray | None], threshold: float = 0.8) -> list[bool]:
    """True for each document whose signature nearly matches a kept earlier one (None: never)."""
    num_perm = next((len(s) for s in signatures if s is not None), 1)
    bands, rows = lsh_bands(threshold, num_perm)
    buckets: list[dict[bytes, list[int]]] = [{} for _ in range(bands)]
    duplicate = []
    for i, sig in enumerate(signatures):
        if sig is None:
            duplicate.append(False)
            continue
        keys = [sig[band * rows : (band + 1) * rows].tobytes() for band in range(bands)]
        candidates = {j for band, key in enumerate(keys) for j in buckets[band].get(key, ())}
        is_dup = any(jaccard_estimate(sig, signatures[j]) >= threshold for j in sorted(candidates))
        duplicate.append(is_dup)
        if not is_dup:  # only kept documents stand for their cluster
            for band, key in enumerate(keys):
                buckets[band].setdefault(key, []).append(i)
    return duplicate
