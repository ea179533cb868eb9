"""A Bloom filter larger than one rank's memory: P parts owned by the ranks, reached by all-to-all.

Layout: the filter's blocks (a multiple of P) are P contiguous ranges, and part i is an ordinary
BloomFilter (pipelines/bloom.py) of blocks / P blocks. An item's part comes from its own salted
hash (Lemire's fast range of 32 bits over P), and all g blocks it visits lie inside that part, so
an insert or a query is one message to one owner, not g. Each part receives a binomial 1/P share of
the items, off the mean by about 1/sqrt(items a part) of it: 4e-4 for 10^8 items in 16 parts,
which at three standard deviations raises a part's false-positive rate by under 3% of itself
(the rate grows about as the 24th power of the load at 1e-8).

Ownership: with K ranks, part i belongs to rank i * K // P (contiguous runs of parts). Built on K
ranks the filter has P = K parts and rank r owns part r; loaded on K ranks each maps the parts it
owns, on one process all of them.

`add` and `contains` are collective: every rank calls them the same number of times with its own
batch (empty when it has none). A batch is sorted by owner and exchanged with MPI Alltoallv; the
owners insert, or answer with one byte an item that travels back the same way.

Saved as one file a part, F.part0of4 ... F.part3of4, each rank writing its own: a Bloom filter
file (with its checksum) whose meta names its part, the part count and a filter id common to the
parts, so parts of different builds are never mixed.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.bloom import BLOCK_BITS, BloomFilter
from pipelines.mpi import settle
from pipelines.ngrams import fmix64

_PART_SALT = np.uint64(0x2545F4914F6CDD1D)  # not one of the Bloom filter's or the sketch's salts
_U32 = np.uint64(32)
_PART_KEYS = ("part", "parts", "filter_id")  # meta of one part, not of the filter


def part_of(hashes: np.ndarray, n_parts: int) -> np.ndarray:
    """The part (0 .. n_parts - 1) each item belongs to."""
    high = fmix64(np.asarray(hashes, dtype=np.uint64) ^ _PART_SALT) >> _U32
    return ((high * np.uint64(n_parts)) >> _U32).astype(np.int64)


def part_path(path: str | Path, part: int, n_parts: int) -> Path:
    return Path(f"{path}.part{part}of{n_parts}")


def saved_parts(path: str | Path) -> dict[int, list[Path]]:
    """The part files saved under `path`, by part count."""
    path = Path(path)
    found: dict[int, list[Path]] = {}
    for candidate in sorted(path.parent.glob(f"{path.name}.part*of*")):
        if match := re.fullmatch(re.escape(path.name) + r"\.part(\d+)of(\d+)", candidate.name):
            found.setdefault(int(match[2]), []).append(candidate)
    return found


def ranks_needed(n_blocks: int, max_memory: int) -> int:
    """The fewest ranks whose parts of a `n_blocks` filter each fit in `max_memory` bytes."""
    blocks_a_rank = max_memory // (BLOCK_BITS // 8)
    if not blocks_a_rank:
        raise ValueError(f"--max-memory {max_memory} bytes is less than one {BLOCK_BITS // 8}-byte block "
                         "of the filter; give bytes with a K, M or G suffix, e.g. 2G")
    return math.ceil(n_blocks / blocks_a_rank)


class PartitionedBloom:
    """A Bloom filter split over the ranks of an mpi4py communicator (a LocalComm: one owns all)."""

    def __init__(self, parts: dict[int, BloomFilter], n_parts: int, k: int, g: int, part_blocks: int,
                 meta: dict[str, Any], comm: Any):
        self.parts, self.n_parts, self.k, self.g = parts, n_parts, k, g
        self.part_blocks, self.meta, self.comm = part_blocks, meta, comm
        self.owner = np.arange(n_parts) * comm.Get_size() // n_parts

    @classmethod
    def create(cls, n_blocks: int, k: int, g: int, meta: dict[str, Any], comm: Any) -> PartitionedBloom:
        """An empty filter of at least `n_blocks` blocks, one part a rank (only this rank's is allocated)."""
        n_parts, rank = comm.Get_size(), comm.Get_rank()
        part_blocks = math.ceil(n_blocks / n_parts)
        part_meta = {**meta, "part": rank, "parts": n_parts, "filter_id": comm.bcast(uuid.uuid4().hex)}
        return cls({rank: BloomFilter(part_blocks, k, g, part_meta)}, n_parts, k, g, part_blocks, meta, comm)

    @property
    def n_blocks(self) -> int:
        return self.part_blocks * self.n_parts

    @property
    def n_bits(self) -> int:
        return self.n_blocks * BLOCK_BITS

    @property
    def part_bytes(self) -> int:
        return self.part_blocks * BLOCK_BITS // 8

    def add(self, hashes: np.ndarray) -> None:
        """Insert this rank's batch (collective)."""
        mine, _ = self._route(np.asarray(hashes, dtype=np.uint64))
        of = part_of(mine, self.n_parts)
        for part, bloom in self.parts.items():
            bloom.add(mine[of == part])

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        """Membership of this rank's batch, like BloomFilter.contains (collective)."""
        mine, back = self._route(np.asarray(hashes, dtype=np.uint64))
        of = part_of(mine, self.n_parts)
        answers = np.zeros(len(mine), bool)
        for part, bloom in self.parts.items():
            where = of == part
            answers[where] = bloom.contains(mine[where])
        return back(answers.view(np.uint8)).view(bool)

    def _route(self, hashes: np.ndarray) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
        """Send each item to its part's owner; returns the items this rank received and a function
        that sends one answer byte for each of them back, in the order of `hashes`."""
        dest = self.owner[part_of(hashes, self.n_parts)]
        order = np.argsort(dest, kind="stable")
        sent = np.bincount(dest, minlength=self.comm.Get_size())
        received = self._counts_received(sent)
        mine = self._alltoallv(hashes[order], sent, received)

        def back(answers: np.ndarray) -> np.ndarray:
            out = np.empty(len(hashes), answers.dtype)
            out[order] = self._alltoallv(answers, received, sent)
            return out

        return mine, back

    def _counts_received(self, sent: np.ndarray) -> np.ndarray:
        if self.comm.Get_size() == 1:
            return sent
        received = np.empty_like(sent)
        self.comm.Alltoall(sent, received)
        return received

    def _alltoallv(self, data: np.ndarray, sent: np.ndarray, received: np.ndarray) -> np.ndarray:
        """The first sent[0] items of `data` go to rank 0, the next sent[1] to rank 1, ...; returns
        what the ranks sent here, received[j] items from rank j."""
        if self.comm.Get_size() == 1:
            return data
        from mpi4py import MPI

        out = np.empty(int(received.sum()), data.dtype)
        kind = {np.dtype(np.uint64): MPI.UINT64_T, np.dtype(np.uint8): MPI.UINT8_T}[data.dtype]
        offsets = lambda counts: (np.cumsum(counts) - counts).tolist()
        self.comm.Alltoallv([np.ascontiguousarray(data), (sent.tolist(), offsets(sent)), kind],
                            [out, (received.tolist(), offsets(received)), kind])
        return out

    def save(self, path: str | Path) -> None:
        """Each rank writes the parts it owns, F.part{i}of{P} (collective)."""
        for part, bloom in self.parts.items():
            bloom.save(part_path(path, part, self.n_parts))
        settle(self.comm)
        self.comm.Barrier()

    @classmethod
    def load(cls, path: str | Path, comm: Any, verify: bool = True) -> PartitionedBloom:
        """Map the parts saved under `path` that this rank owns. Every part's header is read (not its
        bits) to check they are one filter, so a missing or foreign part is an error naming it."""
        fix = f"rebuild it with python -m pipelines.overlap --train ... --save-filter {path}"
        found = saved_parts(path)
        if not found:
            raise FileNotFoundError(f"--filter {path}: neither {path} nor its parts {path}.part0of<P> ... "
                                    f"exist; {fix}")
        if len(found) > 1:
            raise ValueError(f"--filter {path}: parts of {len(found)} filters are there (split in "
                             f"{sorted(found)} parts); remove the stale ones or {fix}")
        (n_parts,) = found
        paths = [part_path(path, i, n_parts) for i in range(n_parts)]
        if missing := [str(p) for p in paths if not p.exists()]:
            raise FileNotFoundError(f"--filter {path}: {', '.join(missing)} missing; {fix}")
        headers = [BloomFilter.load(p, verify=False) for p in paths]  # maps the bits, reads none
        _check_same_filter(headers, paths, fix)
        owner = np.arange(n_parts) * comm.Get_size() // n_parts
        parts = {i: BloomFilter.load(paths[i]) if verify else headers[i]
                 for i in np.flatnonzero(owner == comm.Get_rank()).tolist()}
        first = headers[0]
        meta = {key: value for key, value in first.meta.items() if key not in _PART_KEYS}
        return cls(parts, n_parts, first.k, first.g, first.n_blocks, meta, comm)


def _check_same_filter(parts: list[BloomFilter], paths: list[Path], fix: str) -> None:
    first = parts[0]
    for i, (part, path) in enumerate(zip(parts, paths)):
        if part.meta.get("part") != i or part.meta.get("parts") != len(parts):
            raise ValueError(f"{path} says it is part {part.meta.get('part')} of {part.meta.get('parts')} "
                             f"(renamed?); {fix}")
        if part.meta.get("filter_id") != first.meta.get("filter_id") or part.shape != first.shape:
            raise ValueError(f"{path} belongs to another build than {paths[0]}; {fix}")
