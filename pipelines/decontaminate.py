"""Decontamination: drop training documents that share too many 8-grams with an eval set.

Each eval set's n-grams go into its own Bloom filter (pipelines/bloom.py, false-positive rate
1e-8). A training document is contaminated by a set when the share of its n-grams found there
exceeds `threshold` (default 1%: one of the 181 sample articles shares three common 8-grams, 0.13%
of its own, with LAMBADA, "i can t tell you how many times"; an eval passage pasted into a page of
3,000 words is 2%). The drop reason names the
first set, in the order given, that contaminates it, so the manifest counts each set's removals.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.ngrams import ngram_hashes

if TYPE_CHECKING:
    from pipelines.bloom import BloomFilter


class Decontaminator:
    def __init__(self, eval_sets: Mapping[str, str | Path], threshold: float = 0.01, n: int = 8,
                 fp: float = 1e-8):
        if not 0 <= threshold < 1:
            raise ValueError(f"--decontaminate-threshold {threshold} must be in [0, 1)")
        self.threshold, self.n = threshold, n
        self.filters: dict[str, BloomFilter] = {}
        if not eval_sets:
            return  # the Bloom filter's numba loops (about 100 MiB a process) are loaded only for eval sets
        from pipelines.mpi import LocalComm
        from pipelines.overlap import build_filter

        # eval sets are small: every rank builds the same filters by itself
        self.filters = {
            name: build_filter([path], n, fp, LocalComm()) for name, path in eval_sets.items()}

    def reject_reason(self, text: str) -> str | None:
        if not self.filters:
            return None
        hashes = ngram_hashes(text, self.n)
        if not len(hashes):
            return None
        for name, bloom in self.filters.items():
            if bloom.contains(hashes).mean() > self.threshold:
                return f"contaminated:{name}"
        return None
