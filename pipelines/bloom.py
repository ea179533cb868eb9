"""A cache-line-blocked, sectorized Bloom filter of 64-bit item hashes: compiled, mergeable,
memory-mapped.

Layout: blocks of 512 bits (one 64-byte cache line), each eight 64-bit words ("sectors"). An item
visits g blocks and sets k bits in every sector of each (Lang et al., "Performance-optimal
filtering", 2019), so an insert or query touches g cache lines. Blocking and sectors cost bits
against a classic filter: at the default 1e-8 the filter uses 41 bits an item (g = 3, k = 1) where
a classic one needs 38.3. `size_for` takes bits an item, k and g from the false-positive formula of
a sectorized blocked filter (a Poisson mixture over block loads), so the target holds for the
number of items the filter was sized for.

Insert and query are loops over the items compiled by numba: an item's block and masks are a few
register operations, where numpy needs temporaries for each step and a second pass for items of a
batch that share a block (measured 6x slower; bench/bloom.py).

Items are uint64 hashes (pipelines/ngrams.py). Filters of the same shape built on different
shards or ranks merge by bitwise OR (`|`, or `allreduce` over MPI with BOR): the merge equals the
filter built on the union. `save` writes a small JSON header, with an xxh3_64 checksum of the bits,
and the raw bits; `load` checks the checksum (streaming the file through a fixed buffer), then maps
the bits back read-only. A filter whose bits were overwritten would otherwise answer "present" for
most queries and report a plausible-looking overlap.
"""

from __future__ import annotations

import json
import math
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import numba
import numpy as np
import xxhash

from pipelines.ngrams import fmix64

BLOCK_BITS = 512
SECTORS = BLOCK_BITS // 64
MAX_BLOCKS = 3
MAX_K = 3  # bits a sector
MAX_BLOCK_COUNT = 1 << 32  # block index = (high 32 hash bits * n_blocks) >> 32 (Lemire's fast range)
MAGIC = b"MGBLOOM5"  # 5: checksum of the bits in the header; 4: no checksum; earlier: other n-gram hashes
_MAGIC_NAME = MAGIC[:-1]
_HEADER_ALIGN = 64
_READ_CHUNK = 16 << 20  # bytes read at a time when checking a file's checksum
_ALLREDUCE_CHUNK = 64 << 20  # bytes OR-merged a collective: bounds MPI's temporary buffers
# one hash seed for each visit's block and for each of its k bits a sector
_SALTS = fmix64(np.arange(1, 1 + MAX_BLOCKS * (MAX_K + 1), dtype=np.uint64)).reshape(MAX_BLOCKS, MAX_K + 1)
_U32, _U6, _U63, _U1 = (np.uint64(v) for v in (32, 6, 63, 1))  # numba: uint64 with an int is float64
_U33, _FMIX1, _FMIX2 = np.uint64(33), np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53)


@numba.njit(inline="always")
def fmix64_scalar(h: np.uint64) -> np.uint64:
    """fmix64 of one uint64, for compiled loops (numba: constants must stay uint64)."""
    h ^= h >> _U33
    h *= _FMIX1
    h ^= h >> _U33
    h *= _FMIX2
    return h ^ (h >> _U33)


@numba.njit(inline="always")
def _place(h: np.uint64, salts: np.ndarray, n_blocks: np.uint64, k: int, masks: np.ndarray) -> np.uint64:
    """The block an item visits (Lemire's fast range of 32 hash bits) and, into `masks`, its bit
    in every sector from each of k further hashes (six of a hash's bits a sector)."""
    block = ((fmix64_scalar(h ^ salts[0]) >> _U32) * n_blocks) >> _U32
    masks[:] = 0
    for i in range(1, k + 1):
        bits = fmix64_scalar(h ^ salts[i])
        for s in range(SECTORS):
            masks[s] |= _U1 << ((bits >> (_U6 * np.uint64(s))) & _U63)
    return block


@numba.njit(cache=True, nogil=True)
def _add(blocks: np.ndarray, hashes: np.ndarray, k: int, g: int) -> None:
    masks = np.empty(SECTORS, np.uint64)
    for h in hashes:
        for visit in range(g):
            block = _place(h, _SALTS[visit], np.uint64(blocks.shape[0]), k, masks)
            for s in range(SECTORS):
                blocks[block, s] |= masks[s]


@numba.njit(cache=True, nogil=True)
def _contains(blocks: np.ndarray, hashes: np.ndarray, k: int, g: int, out: np.ndarray) -> None:
    masks = np.empty(SECTORS, np.uint64)
    for j, h in enumerate(hashes):
        found = True
        for visit in range(g):
            block = _place(h, _SALTS[visit], np.uint64(blocks.shape[0]), k, masks)
            for s in range(SECTORS):
                found &= blocks[block, s] & masks[s] == masks[s]
            if not found:
                break
        out[j] = found


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


def shape_for(n_items: int, fp: float) -> tuple[int, int, int]:
    """(blocks, k, g) of a filter holding `n_items` distinct items at false-positive rate <= fp."""
    bits, k, g = size_for(fp)
    return max(1, math.ceil(max(1, n_items) * bits / BLOCK_BITS)), k, g


class BloomFilter:
    """Set membership of uint64 hashes with no false negatives and a bounded false-positive rate."""

    def __init__(self, n_blocks: int, k: int, g: int, meta: dict[str, Any] | None = None,
                 blocks: np.ndarray | None = None):
        if not 1 <= n_blocks < MAX_BLOCK_COUNT or not 1 <= k <= MAX_K or not 1 <= g <= MAX_BLOCKS:
            raise ValueError(f"bad Bloom filter shape: {n_blocks} blocks, k={k}, g={g}")
        self.n_blocks, self.k, self.g = n_blocks, k, g
        self.meta = dict(meta or {})
        self.blocks = np.zeros((n_blocks, SECTORS), np.uint64) if blocks is None else blocks

    @classmethod
    def for_items(cls, n_items: int, fp: float = 1e-8, **meta: Any) -> BloomFilter:
        """A filter sized so that holding `n_items` distinct items keeps false positives <= fp."""
        return cls(*shape_for(n_items, fp), {"expected_items": int(n_items), "fp": fp, **meta})

    @property
    def n_bits(self) -> int:
        return self.n_blocks * BLOCK_BITS

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.n_blocks, self.k, self.g

    def add(self, hashes: np.ndarray) -> None:
        _add(self.blocks, np.ascontiguousarray(hashes, dtype=np.uint64), self.k, self.g)

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        """A bool for each hash: False means surely absent, True present up to the fp rate."""
        out = np.empty(len(hashes), dtype=bool)
        _contains(self.blocks, np.ascontiguousarray(hashes, dtype=np.uint64), self.k, self.g, out)
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
        """OR the filters of all ranks of an mpi4py communicator into each of them.

        In slices of 64 MiB: MPICH's reduce-scatter/allgather allocates a temporary buffer the size
        of the message, which for the whole filter would double a rank's peak memory.
        """
        if comm.Get_size() == 1:
            return
        from mpi4py import MPI

        flat = self.blocks.reshape(-1)
        step = _ALLREDUCE_CHUNK // flat.itemsize
        for start in range(0, len(flat), step):
            comm.Allreduce(MPI.IN_PLACE, flat[start : start + step], op=MPI.BOR)

    def fill_ratio(self) -> float:
        return float(np.unpackbits(self.blocks.view(np.uint8)).mean())

    def checksum(self) -> str:
        """xxh3_64 of the bits, as hex: what `save` records and `load` checks."""
        return xxhash.xxh3_64_hexdigest(np.ascontiguousarray(self.blocks))

    def save(self, path: str | Path) -> None:
        """Header (magic, JSON length, JSON with the bits' checksum) padded to 64 bytes, then the bits;
        written atomically."""
        path = Path(path)
        header = json.dumps({"n_blocks": self.n_blocks, "k": self.k, "g": self.g, "meta": self.meta,
                             "checksum": self.checksum()}).encode()
        head = MAGIC + len(header).to_bytes(8, "little") + header
        head += b"\0" * (-len(head) % _HEADER_ALIGN)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("wb") as out:
            out.write(head)
            out.write(np.ascontiguousarray(self.blocks).tobytes())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path, verify: bool = True) -> BloomFilter:
        """Map a saved filter read-only; the error names the file when it is not a whole filter.

        `verify` first reads the whole file to check the checksum of the bits (xxh3_64, in 16 MiB
        reads): bench/overlap_scale.py measured 21 ms for a 54 MiB filter whose plain read from the
        page cache takes 15 ms (1.4x a read; from disk the read itself dominates). Skip it only for
        a file just checked.
        """
        path = Path(path)
        fix = f"rebuild it with python -m pipelines.overlap --train ... --save-filter {saved_name(path)}"
        try:
            with path.open("rb") as f:
                header, offset = _read_header(f)
                n_blocks, k, g = int(header["n_blocks"]), int(header["k"]), int(header["g"])
                expected, size = offset + n_blocks * BLOCK_BITS // 8, path.stat().st_size
                if size != expected:
                    raise ValueError(f"{size} bytes where {expected} were expected (truncated?)")
                if verify and (found := _file_checksum(f)) != header["checksum"]:
                    raise ValueError(f"its bits do not match the checksum saved with them (xxh3_64 {found}, "
                                     f"header {header['checksum']}): the file changed after it was saved")
            blocks = np.memmap(path, np.uint64, "r", offset, (n_blocks, SECTORS))
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: cannot load Bloom filter ({err}); {fix}") from None
        return cls(n_blocks, k, g, header.get("meta"), blocks)


def _read_header(f: Any) -> tuple[dict[str, Any], int]:
    """The JSON header of an open filter file and the offset of its bits; leaves f at the bits."""
    magic, length = f.read(8), int.from_bytes(f.read(8), "little")
    if magic != MAGIC:
        raise ValueError(_magic_problem(magic))
    header = json.loads(f.read(length))
    offset = 16 + length + (-(16 + length) % _HEADER_ALIGN)
    f.seek(offset)
    return header, offset


def saved_name(path: str | Path) -> str:
    """The name given to --save-filter: a part file F.part0of4 was saved as F."""
    return re.sub(r"\.part\d+of\d+$", "", str(path))


def _magic_problem(magic: bytes) -> str:
    if magic[:-1] == _MAGIC_NAME:
        return (f"format {magic[-1:].decode(errors='replace')} of an older megagpt (this one reads format "
                f"{MAGIC[-1:].decode()}, whose header holds a checksum of the bits)")
    return "not a megagpt Bloom filter"


def _file_checksum(f: Any) -> str:
    """xxh3_64 of the rest of an open file, read through one fixed buffer (memory stays flat)."""
    digest = xxhash.xxh3_64()
    buffer = bytearray(_READ_CHUNK)
    view = memoryview(buffer)
    while read := f.readinto(buffer):
        digest.update(view[:read])
    return digest.hexdigest()
