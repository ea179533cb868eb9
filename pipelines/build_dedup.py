"""The dedup steps of a corpus build, a hash range at a time: exact duplicates by text digest,
near duplicates by MinHash LSH band (candidate pairs verified by estimated Jaccard), then the
union-find over all verified edges. A rank deciding one range reads only its rows of each chunk's
sorted files (pipelines/dedup.py), so no rank holds the corpus's digests or signatures.

A part of pipelines.build's `_Build`: it uses the build's settings, work area, chunks and ranks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import numpy as np

from pipelines.dedup import (
    candidate_pairs,
    exact_duplicate_keys,
    near_duplicate_keys,
    partition_rows,
    verified_edges,
)
from pipelines.workarea import save_array, save_json

RECORDS_A_PARTITION = 1 << 20  # dedup records a rank holds at once (~24 MiB of digests)


class DuplicateSteps:
    """The exact and near steps of a build, and the near duplicates every rank then knows."""

    def decide_duplicates(self) -> None:
        kept = sum(self.area.record("map", c.id)["kept"] for c in self.chunks)
        self.exact_parts = self._partitions("exact", kept)
        self._run("exact", range(self.exact_parts), self._exact_partition)
        bands, _ = self.s.lsh_bands()
        self.near_parts = self._partitions("near", kept * bands)  # a band record a band a document
        self._run("near", range(self.near_parts), self._near_partition)
        edges = [np.load(self.area.file("near", p, "edges.npy")) for p in range(self.near_parts)]
        self.near_duplicates = near_duplicate_keys(np.concatenate(edges) if edges else np.empty((0, 2)))

    def _partitions(self, stage: str, records: int) -> int:
        """How many hash ranges `stage` is cut into: fixed at its first attempt, so that a
        continued build finds its finished ranges whatever its number of ranks."""
        path = self.area.stage(stage) / "partitions.json"
        if self.rank == 0 and not path.is_file():
            parts = min(1 << 12, max(self.size, math.ceil(records / RECORDS_A_PARTITION)))
            save_json(path, {"partitions": parts})
        self.comm.Barrier()
        return json.loads(path.read_text())["partitions"]

    def _gather_partition(self, name: str, part: int, parts: int) -> np.ndarray:
        """Every chunk's records of hash range `part`: read from the chunks' sorted files."""
        pieces = []
        for c in self.chunks:
            bounds = np.load(self.area.file("map", c.id, f"{name}.bounds.npy"))
            rows = partition_rows(bounds, part, parts)
            if rows.stop > rows.start:
                pieces.append(np.load(self.area.file("map", c.id, f"{name}.npy"), mmap_mode="r")[rows])
        return np.concatenate(pieces) if pieces else np.empty(0)

    def _exact_partition(self, part: int) -> None:
        records = self._gather_partition("digests", part, self.exact_parts)
        duplicates = exact_duplicate_keys(records) if len(records) else np.empty(0, np.uint64)
        save_array(self.area.file("exact", part, "duplicates.npy"), duplicates.astype(np.uint64))
        self.area.finish("exact", part, {"duplicates": len(duplicates)})

    def _near_partition(self, part: int) -> None:
        records = self._gather_partition("bands", part, self.near_parts)
        pairs = candidate_pairs(records) if len(records) else np.empty((0, 2), np.uint64)
        edges = verified_edges(pairs, self._signature_lookup(), self.s.near_threshold)
        save_array(self.area.file("near", part, "edges.npy"), edges.astype(np.uint64).reshape(-1, 2))
        self.area.finish("near", part, {"candidates": len(pairs), "edges": len(edges)})

    def _signature_lookup(self) -> Callable[[int], np.ndarray]:
        """The MinHash signature of a document key, read from its chunk's files (kept open)."""
        cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

        def signature_of(key: int) -> np.ndarray:
            chunk = int(np.searchsorted(self.first_keys, np.uint64(key), side="right")) - 1
            if chunk not in cache:
                keys = np.load(self.area.file("map", chunk, "docs.npz"))["keys"]
                cache[chunk] = keys, np.load(self.area.file("map", chunk, "signatures.npy"), mmap_mode="r")
            keys, sigs = cache[chunk]
            return sigs[int(np.searchsorted(keys, np.uint64(key)))]

        return signature_of
