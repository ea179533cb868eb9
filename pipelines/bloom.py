"""A cache-line-blocked, sectorized Bloom filter of 64-bit item hashes: numpy-vectorised, mergeable,
memory-mapped.

Layout: blocks of 512 bits (one 64-byte cache line), each eight 64-bit words ("sectors"). An item
visits g blocks and sets k bits in every sector of each (Lang et al., "Performance-optimal
filtering", 2019). Then an item's 8 masks in a block are computed for all items at once with
numpy shifts (no per-bit fancy indexing), and an insert or query is one 64-byte gather/scatter
a block. Blocking and sectors cost bits against a classic filter: at the default 1e-8 the filter
uses 41 bits an item (g = 3, k = 1) where a classic one needs 38.3. `size_for` takes bits an item,
k and g from the false-positive formula of a sectorized blocked filter (a Poisson mixture over
block loads), so the target holds for the number of items the filter was sized for.

Items are uint64 hashes (pipelines/ngrams.py). Filters of the same shape built on different
shards or ranks merge by bitwise OR (`|`, or `allreduce` over MPI with BOR): the merge equals the
filter built on the union. `save` writes a small JSON header and the raw bits; `load` maps the
bits back read-only without reading them.
"""

from __future__ import annotations

import json
import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.ngrams import fmix64

BLOCK_BITS = 512
SECTORS = BLOCK_BITS // 64
MAX_BLOCKS = 3
MAX_K = 3  # bits a sector
MAX_BLOCK_COUNT = 1 << 32  # block index = (high 32 hash bits * n_blocks) >> 32 (Lemire's fast range)
MAGIC = b"MGBLOOM3"
_HEADER_ALIGN = 64
_BATCH = 1 << 13  # items a numpy pass: temporaries (512 KB) stay in cache; measured best of 2^11..2^16
_SALTS = fmix64(np.arange(1, 1 + MAX_BLOCKS * (MAX_K + 1), dtype=np.uint64)).reshape(MAX_BLOCKS, MAX_K + 1)
_ROW = np.dtype((np.void, BLOCK_BITS // 8))
_SECTOR_SHIFTS = np.arange(0, 6 * SECTORS, 6, dtype=np.uint64)  # 6 bits of one hash a sector


def blocked_false_positive(bits_per_item: float, k: int, g: int) -> float:
    """False-positive rate of the filter when it holds one item for each `bits_per_item` bits.

    A block is visited by j items with probability Poisson(j; g * 512 / bits_per_item); then a
    given bit of a sector is set with probability 1 - (1 - 1/64)^(j k), and a query needs all 8k
    of its bits set in each of its g (independently placed) blocks.
    """
    lam = g * BLOCK_BITS / bits_per_item
    j = np.arange(0, int(lam + 20 * math.sqrt(lam) + 50))
    log_pois = j * math.log(lam) - lam - np.array([math.lgamma(x + 1) for x in j])
    fp_given_j = (1 - (1 - 1 / 64) ** (j * k)) ** (SECTORS * k)
    return float(np.sum(np.exp(log_pois) * fp_given_j)) ** g


@lru_cache(maxsize=64)
def size_for(fp: float) -> tuple[float, int, int]:
    """(bits an item, bits a sector k, blocks an item g): the fewest bits meeting rate `fp`."""
    if not 0 < fp < 1:
        raise ValueError(f"false-positive rate {fp} must be in (0, 1), e.g. 1e-8")
    best = None
    for g in range(1, MAX_BLOCKS + 1):
        for k in range(1, MAX_K + 1):
            for bits in np.arange(2.0, 256.0, 0.25):
                if blocked_false_positive(bits, k, g) <= fp:
                    if best is None or bits < best[0]:
                        best = (float(bits), k, g)
                    break
    if best is None:
        raise ValueError(f"false-positive rate {fp} is too small for this Bloom filter")
    return best


class BloomFilter:
    """Set membership of uint64 hashes with no false negatives and a bounded false-positive rate."""

    def __init__(self, n_blocks: int, k: int, g: int, meta: dict[str, Any] | None = None,
                 blocks: np.ndarray | None = None):
        if not 1 <= n_blocks < MAX_BLOCK_COUNT or not 1 <= k <= MAX_K or not 1 <= g <= MAX_BLOCKS:
            raise ValueError(f"bad Bloom filter shape: {n_blocks} blocks, k={k}, g={g}")
        self.n_blocks, self.k, self.g = n_blocks, k, g
        self.meta = dict(meta or {})
        self.blocks = np.zeros((n_blocks, SECTORS), np.uint64) if blocks is None else blocks
        self._owner: np.ndarray | None = None  # scratch for add(): which item of a batch writes a block

    @classmethod
    def for_items(cls, n_items: int, fp: float = 1e-8, **meta: Any) -> BloomFilter:
        """A filter sized so that holding `n_items` distinct items keeps false positives <= fp."""
        bits, k, g = size_for(fp)
        n_blocks = max(1, math.ceil(max(1, n_items) * bits / BLOCK_BITS))
        return cls(n_blocks, k, g, {"expected_items": int(n_items), "fp": fp, **meta})

    @property
    def n_bits(self) -> int:
        return self.n_blocks * BLOCK_BITS

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.n_blocks, self.k, self.g

    def _locate(self, hashes: np.ndarray, visit: int) -> tuple[np.ndarray, np.ndarray]:
        """The block each item visits on its `visit`-th visit, and its 8 sector masks there.

        One 64-bit hash places the block, and each further one gives one bit in every sector
        (six of its bits a sector): k + 1 hashes an item and visit, all numpy-vectorised.
        """
        h = np.asarray(hashes, dtype=np.uint64)
        salts = _SALTS[visit]
        high = fmix64(h ^ salts[0]) >> np.uint64(32)
        block = ((high * np.uint64(self.n_blocks)) >> np.uint64(32)).astype(np.intp)
        masks = np.zeros((len(h), SECTORS), np.uint64)
        for i in range(1, self.k + 1):
            bits = fmix64(h ^ salts[i])
            masks |= np.left_shift(np.uint64(1), (bits[:, None] >> _SECTOR_SHIFTS) & np.uint64(63))
        return block, masks

    def add(self, hashes: np.ndarray) -> None:
        rows = self.blocks.view(_ROW).reshape(-1)  # one 64-byte element a block
        if self._owner is None:
            self._owner = np.zeros(self.n_blocks, np.int32)
        for lo in range(0, len(hashes), _BATCH):
            for visit in range(self.g):
                block, masks = self._locate(hashes[lo : lo + _BATCH], visit)
                # several items of a batch may share a block, and a fancy-index write keeps only
                # one of them: write one item a block (the last to claim it), then the rest again
                while len(block):
                    claim = np.arange(len(block), dtype=np.int32)
                    self._owner[block] = claim
                    won = self._owner[block] == claim
                    mine = block[won]
                    merged = np.take(self.blocks, mine, axis=0)
                    merged |= masks[won]
                    rows[mine] = merged.view(_ROW).reshape(-1)
                    block, masks = block[~won], masks[~won]

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        """A bool for each hash: False means surely absent, True present up to the fp rate."""
        out = np.ones(len(hashes), dtype=bool)
        for lo in range(0, len(hashes), _BATCH):
            part = out[lo : lo + _BATCH]
            for visit in range(self.g):
                block, masks = self._locate(hashes[lo : lo + _BATCH], visit)
                present = np.take(self.blocks, block, axis=0)
                present &= masks
                part &= present.view(_ROW).reshape(-1) == masks.view(_ROW).reshape(-1)
        return out

    def _check_compatible(self, other: BloomFilter) -> None:
        if self.shape != other.shape:
            raise ValueError(f"cannot merge Bloom filters of different shapes (blocks, k, g) "
                             f"{self.shape} and {other.shape}; size them for the same items and fp")

    def __or__(self, other: BloomFilter) -> BloomFilter:
        self._check_compatible(other)
        return BloomFilter(*self.shape, self.meta, self.blocks | other.blocks)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, BloomFilter) and self.shape == other.shape
                and np.array_equal(self.blocks, other.blocks))

    def allreduce(self, comm: Any) -> None:
        """OR the filters of all ranks of an mpi4py communicator into each of them."""
        if comm.Get_size() == 1:
            return
        from mpi4py import MPI

        comm.Allreduce(MPI.IN_PLACE, self.blocks, op=MPI.BOR)

    def fill_ratio(self) -> float:
        return float(np.unpackbits(self.blocks.view(np.uint8)).mean())

    def save(self, path: str | Path) -> None:
        """Header (magic, JSON length, JSON) padded to 64 bytes, then the bits; written atomically."""
        path = Path(path)
        header = json.dumps({"n_blocks": self.n_blocks, "k": self.k, "g": self.g, "meta": self.meta}).encode()
        head = MAGIC + len(header).to_bytes(8, "little") + header
        head += b"\0" * (-len(head) % _HEADER_ALIGN)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("wb") as out:
            out.write(head)
            out.write(np.ascontiguousarray(self.blocks).tobytes())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> BloomFilter:
        """Map a saved filter read-only; the error names the file when it is not a whole filter."""
        path = Path(path)
        fix = "save it again with python -m pipelines.overlap ... --save-filter"
        try:
            with path.open("rb") as f:
                magic, length = f.read(8), int.from_bytes(f.read(8), "little")
                if magic != MAGIC:
                    raise ValueError("not a megagpt Bloom filter")
                header = json.loads(f.read(length))
            offset = 16 + length + (-(16 + length) % _HEADER_ALIGN)
            n_blocks, k, g = int(header["n_blocks"]), int(header["k"]), int(header["g"])
            expected = offset + n_blocks * BLOCK_BITS // 8
            if path.stat().st_size != expected:
                raise ValueError(f"{path.stat().st_size} bytes where {expected} were expected (truncated?)")
            blocks = np.memmap(path, np.uint64, "r", offset, (n_blocks, SECTORS))
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: cannot load Bloom filter ({err}); {fix}") from None
        return cls(n_blocks, k, g, header.get("meta"), blocks)
