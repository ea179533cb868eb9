"""The dedup steps of a corpus build: exact duplicates by text digest (a hash range at a time),
near duplicates by MinHash LSH band (a band-hash range at a time: candidate pairs, those plainly
apart dropped by their signatures' estimate), then the exact check of the remaining pairs (a chunk
at a time: the shingle sets of the documents in a pair, then the pairs' exact Jaccard similarity)
and the union-find over all verified edges. A rank deciding one range reads only its rows of each
chunk's sorted files (pipelines/dedup.py), so no rank holds the corpus's digests or signatures;
every rank holds the plausible pairs, a few per near-duplicate document.

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
    plausible_pairs,
    verified_edges,
)
from pipelines.minhash import shingle_sets
from pipelines.workarea import save_array, save_json

RECORDS_A_PARTITION = 1 << 20  # dedup records a rank holds at once (~24 MiB of digests)
NO_PAIRS = np.empty((0, 2), np.uint64)
RowOf = Callable[[int], np.ndarray]  # a row of a file, by index or by document key


class DuplicateSteps:
    """The exact and near steps of a build, and the near duplicates every rank then knows."""

    def decide_duplicates(self) -> None:
        kept = sum(self.area.record("map", c.id)["kept"] for c in self.chunks)
        self.exact_parts = self._partitions("exact", kept)
        self._run("exact", range(self.exact_parts), self._exact_partition)
        bands, _ = self.s.lsh_bands()
        self.near_parts = self._partitions("near", kept * bands)  # a band record a band a document
        self._run("near", range(self.near_parts), self._near_partition)
        pairs = [np.load(self.area.file("near", p, "pairs.npy")) for p in range(self.near_parts)]
        self.pairs = np.unique(np.concatenate(pairs), axis=0) if pairs else NO_PAIRS
        self._run("shingles", range(len(self.chunks)), self._shingle_chunk)
        self._run("verify", range(len(self.chunks)), self._verify_chunk)
        edges = [np.load(self.area.file("verify", c.id, "edges.npy")) for c in self.chunks]
        self.near_duplicates = near_duplicate_keys(np.concatenate(edges) if edges else NO_PAIRS)

    def near_pair_counts(self) -> dict[str, int]:
        """How many distinct pairs went to the exact check, and how many were near duplicates
        (the candidates before the estimate are counted a hash range at a time, where a pair
        sharing bands in two ranges counts twice: they are in the work area's records only)."""
        return {"plausible": len(self.pairs),
                "verified": sum(self.area.record("verify", c.id)["edges"] for c in self.chunks)}

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
        pairs = candidate_pairs(records) if len(records) else NO_PAIRS
        plausible = plausible_pairs(pairs, self._key_lookup(self._signatures), self.s.near_threshold)
        save_array(self.area.file("near", part, "pairs.npy"), plausible.astype(np.uint64).reshape(-1, 2))
        self.area.finish("near", part, {"candidates": len(pairs), "plausible": len(plausible)})

    def _shingle_chunk(self, unit: int) -> None:
        """The shingle sets of the chunk's documents that are in a plausible pair, concatenated
        (`sets.npy`, uint32) with where each starts (`offsets.npy`, one row a document)."""
        keys = np.load(self.area.file("map", unit, "docs.npz"))["keys"]
        wanted = np.isin(keys, self.pairs)
        sets = shingle_sets([doc["text"] for doc, w in zip(self._texts(unit), wanted) if w], self.s.shingle)
        sizes = np.zeros(len(keys), np.int64)
        sizes[wanted] = [len(s) for s in sets]
        save_array(self.area.file("shingles", unit, "sets.npy"),
                   np.concatenate([np.empty(0, np.uint32), *sets]))
        save_array(self.area.file("shingles", unit, "offsets.npy"), np.r_[0, np.cumsum(sizes)])
        self.area.finish("shingles", unit, {"documents": len(sets)})

    def _verify_chunk(self, unit: int) -> None:
        """The plausible pairs whose lower key is in this chunk, kept when their exact Jaccard
        similarity reaches the threshold."""
        low = self.first_keys[unit]
        high = self.first_keys[unit + 1] if unit + 1 < len(self.chunks) else np.uint64(2**64 - 1)
        mine = self.pairs[(self.pairs[:, 0] >= low) & (self.pairs[:, 0] < high)]
        edges = verified_edges(mine, self._key_lookup(self._shingle_sets), self.s.near_threshold)
        save_array(self.area.file("verify", unit, "edges.npy"), edges.astype(np.uint64).reshape(-1, 2))
        self.area.finish("verify", unit, {"pairs": len(mine), "edges": len(edges)})

    def _key_lookup(self, open_chunk: Callable[[int], RowOf]) -> RowOf:
        """A document key's row of a per-chunk file: `open_chunk(chunk)` gives the row of an index
        in the chunk, and each chunk is opened once."""
        opened: dict[int, tuple[np.ndarray, RowOf]] = {}

        def lookup(key: int) -> np.ndarray:
            chunk = int(np.searchsorted(self.first_keys, np.uint64(key), side="right")) - 1
            if chunk not in opened:
                opened[chunk] = np.load(self.area.file("map", chunk, "docs.npz"))["keys"], open_chunk(chunk)
            keys, row = opened[chunk]
            return row(int(np.searchsorted(keys, np.uint64(key))))

        return lookup

    def _signatures(self, chunk: int) -> RowOf:
        return np.load(self.area.file("map", chunk, "signatures.npy"), mmap_mode="r").__getitem__

    def _shingle_sets(self, chunk: int) -> RowOf:
        sets = np.load(self.area.file("shingles", chunk, "sets.npy"), mmap_mode="r")
        offsets = np.load(self.area.file("shingles", chunk, "offsets.npy"))
        return lambda i: np.asarray(sets[offsets[i] : offsets[i + 1]])
