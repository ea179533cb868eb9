"""A cache-line-blocked Bloom filter of 64-bit item hashes: numpy-vectorised, mergeable, memory-mapped.

Each item sets k bits inside each of g 512-bit blocks (64-byte cache lines), so an insert
or a query touches g cache lines instead of g*k random ones, and a batch of items is one numpy
gather/scatter. Blocking costs bits: an item's bits crowd into its blocks, so for a false-positive
target the filter needs more bits an item than a classic one (44 instead of 38.3 at 1e-8, with
g = 2). `size_for` takes bits an item, k and g from the false-positive formula of a blocked filter
(a Poisson mixture over block loads), so the target holds for the expected number of items.

Items are uint64 hashes (pipelines/ngrams.py). Filters of the same size built on different
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
WORDS_PER_BLOCK = BLOCK_BITS // 64
MAGIC = b"MGBLOOM1"
_HEADER_ALIGN = 64
_BATCH = 1 << 16  # items a numpy pass, bounds temporary memory to a few MB
# (block salt, bit salt) for each block an item visits: SHA-512's initial values
_SALTS = [(np.uint64(a), np.uint64(b)) for a, b in [
    (0x6A09E667F3BCC908, 0xBB67AE8584CAA73B), (0x3C6EF372FE94F82B, 0xA54FF53A5F1D36F1),
    (0x510E527FADE682D1, 0x9B05688C2B3E6C1F), (0x1F83D9ABFB41BD6B, 0x5BE0CD19137E2179)]]


def blocked_false_positive(bits_per_item: float, k: int, g: int = 1) -> float:
    """False-positive rate of a 512-bit-blocked filter where an item sets k bits in each of g blocks.

    A block is visited by j items with probability Poisson(j; g * 512 / bits_per_item); with j
    visits a given bit is set with probability 1 - (1 - 1/512)^(j k) (positions are independent),
    and a query needs all k of its bits set in each of its g (independent) blocks.
    """
    lam = g * BLOCK_BITS / bits_per_item
    j = np.arange(0, int(lam + 20 * math.sqrt(lam) + 50))
    log_pois = j * math.log(lam) - lam - np.array([math.lgamma(x + 1) for x in j])
    fp_given_j = (1 - (1 - 1 / BLOCK_BITS) ** (j * k)) ** k
    return float(np.sum(np.exp(log_pois) * fp_given_j)) ** g


@lru_cache(maxsize=64)
def size_for(fp: float) -> tuple[float, int, int]:
    """(bits an item, bits set a block, blocks an item) of a small blocked filter meeting rate fp.

    One block an item is fastest, but at low rates its bits crowd (1e-8 needs 64 bits an item
    against 38 for a classic filter); we take the fewest blocks an item that stay within 20% of
    the classic filter's -log2(fp) / ln 2 bits (1e-8: two blocks, about 45 bits an item).
    """
    if not 0 < fp < 1:
        raise ValueError(f"false-positive rate {fp} must be in (0, 1), e.g. 1e-8")
    classic = -math.log2(fp) / math.log(2)
    for g in (1, 2, 3, 4):
        for bits in np.arange(2.0, 1.2 * classic + 1, 0.25):
            k_opt = bits * math.log(2) / g
            for k in range(max(1, round(k_opt * 0.5)), round(k_opt) + 2):
                if blocked_false_positive(bits, k, g) <= fp:
                    return float(bits), k, g
    raise ValueError(f"false-positive rate {fp} is too small for a blocked Bloom filter")


class BloomFilter:
    """Set membership of uint64 hashes with no false negatives and a bounded false-positive rate."""

    def __init__(self, n_blocks: int, k: int, g: int = 1, meta: dict[str, Any] | None = None,
                 blocks: np.ndarray | None = None):
        if n_blocks < 1 or not 1 <= k <= BLOCK_BITS or not 1 <= g <= len(_SALTS):
            raise ValueError(f"bad Bloom filter shape: {n_blocks} blocks, k={k}, g={g}")
        self.n_blocks, self.k, self.g = n_blocks, k, g
        self.meta = dict(meta or {})
        self.blocks = np.zeros((n_blocks, WORDS_PER_BLOCK), np.uint64) if blocks is None else blocks

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

    def _locate(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each item and each of its g blocks (item-major): block index, 8-word mask of its k bits."""
        h = np.asarray(hashes, dtype=np.uint64)
        blocks, masks = [], []
        for salt_block, salt_bits in _SALTS[: self.g]:
            blocks.append(fmix64(h ^ salt_block) % np.uint64(self.n_blocks))
            mask = np.zeros((len(h), WORDS_PER_BLOCK), np.uint64)
            rows = np.arange(len(h))
            for i in range(self.k):  # 9 independent hash bits a position, 7 positions a 64-bit hash
                if i % 7 == 0:
                    bits = fmix64(h ^ (salt_bits + np.uint64(i)))
                bit = ((bits >> np.uint64(9 * (i % 7))) & np.uint64(BLOCK_BITS - 1)).astype(np.int64)
                mask[rows, bit >> 6] |= np.left_shift(np.uint64(1), (bit & 63).astype(np.uint64))
            masks.append(mask)
        block = np.stack(blocks, axis=1).reshape(-1).astype(np.int64)
        return block, np.stack(masks, axis=1).reshape(-1, WORDS_PER_BLOCK)

    def add(self, hashes: np.ndarray) -> None:
        for lo in range(0, len(hashes), _BATCH):
            block, masks = self._locate(hashes[lo : lo + _BATCH])
            # a fancy-index OR keeps only one of several items hitting the same block in a batch;
            # re-apply the others until every item's bits are in (rarely more than three passes)
            while len(block):
                self.blocks[block] |= masks
                missing = ((self.blocks[block] & masks) != masks).any(axis=1)
                block, masks = block[missing], masks[missing]

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        """A bool for each hash: False means surely absent, True present up to the fp rate."""
        out = np.empty(len(hashes), dtype=bool)
        for lo in range(0, len(hashes), _BATCH):
            block, masks = self._locate(hashes[lo : lo + _BATCH])
            hit = ((self.blocks[block] & masks) == masks).all(axis=1)
            out[lo : lo + _BATCH] = hit.reshape(-1, self.g).all(axis=1)
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
            blocks = np.memmap(path, np.uint64, "r", offset, (n_blocks, WORDS_PER_BLOCK))
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: cannot load Bloom filter ({err}); {fix}") from None
        return cls(n_blocks, k, g, header.get("meta"), blocks)
