"""Distinct-count estimate of a stream of 64-bit hashes in fixed memory: a HyperLogLog sketch.

The overlap checker sizes its Bloom filter for the number of distinct training n-grams; counting
them exactly needs 8 bytes a distinct n-gram (the whole set in memory), this needs 2^p bytes
(64 KiB at the default p = 16) whatever the stream's length.

Each item is remixed (murmur3's fmix64 with a salt of its own, so the sketch needs no
well-mixed input and is independent of the Bloom filter's placement); its top p bits pick one of
m = 2^p registers, which keeps the largest "leading zeros of the other 64 - p bits, plus one" seen.
Sketches of different ranks or shards merge by element-wise max (`|`, or `allreduce` over MPI
with MAX), and the merge equals the sketch of the union: a rank never sends its hashes.

The estimate is Ertl's improved raw estimator ("New cardinality estimation algorithms for
HyperLogLog sketches", 2017, algorithm 6): unbiased from 0 items to far beyond 2^40 with no
empirical bias tables or switch to linear counting, with relative standard error about
1.04 / sqrt(m) (0.41% at p = 16; -0.56% = -1.4 of it on 10.9M distinct 8-grams in
bench/overlap_scale.py). datasketch's HyperLogLogPlusPlus estimates as well but hashes every item
in a Python call (sha1 of bytes by default): 0.55 M items/s there, where this compiled loop over a
uint64 array, like the Bloom filter's, updates 29 M/s on the same busy 2 cores.
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np

from pipelines.bloom import fmix64_scalar

DEFAULT_PRECISION = 16
_SALT = np.uint64(0x5851F42D4C957F2D)  # any odd constant not used by the Bloom filter's salts
_TOP_BIT = np.uint64(1 << 63)
_U1 = np.uint64(1)


@numba.njit(cache=True, nogil=True)
def _update(registers: np.ndarray, hashes: np.ndarray, p: int) -> None:
    q = 64 - p
    for h in hashes:
        x = fmix64_scalar(h ^ _SALT)
        index = x >> np.uint64(q)
        rest = x << np.uint64(p)  # the other q bits, at the top
        rank = 1
        while rank <= q and not rest & _TOP_BIT:
            rest <<= _U1
            rank += 1
        if rank > registers[index]:
            registers[index] = rank


def _sigma(x: float) -> float:
    """Ertl's sigma(x) = x + sum_k x^(2^k) 2^(k-1): the empty registers' share of the estimate."""
    if x == 1.0:
        return math.inf
    y, z = 1.0, x
    while True:
        x *= x
        previous, z = z, z + x * y
        y += y
        if z == previous:
            return z


def _tau(x: float) -> float:
    """Ertl's tau(x): the share of the registers that saturated (q + 1 leading zeros)."""
    if x in (0.0, 1.0):
        return 0.0
    y, z = 1.0, 1.0 - x
    while True:
        x = math.sqrt(x)
        previous, y = z, 0.5 * y
        z -= (1.0 - x) ** 2 * y
        if z == previous:
            return z / 3.0


class HyperLogLog:
    """A mergeable distinct-count sketch of uint64 items with a stated relative standard error."""

    def __init__(self, precision: int = DEFAULT_PRECISION, registers: np.ndarray | None = None):
        if not 4 <= precision <= 24:
            raise ValueError(f"HyperLogLog precision {precision} must be in [4, 24] (2^p registers)")
        self.p = precision
        self.registers = np.zeros(1 << precision, np.uint8) if registers is None else registers

    @property
    def relative_std_error(self) -> float:
        """Standard deviation of estimate / true count: 1.04 / sqrt(m)."""
        return 1.04 / math.sqrt(len(self.registers))

    def add(self, hashes: np.ndarray) -> None:
        _update(self.registers, np.ascontiguousarray(hashes, dtype=np.uint64), self.p)

    def estimate(self) -> float:
        """The distinct count of everything added (and merged), Ertl's improved raw estimator."""
        m, q = len(self.registers), 64 - self.p
        counts = np.bincount(self.registers, minlength=q + 2).astype(float)
        if counts[0] == m:
            return 0.0
        z = m * _tau(1.0 - counts[q + 1] / m)
        for k in range(q, 0, -1):
            z = 0.5 * (z + counts[k])
        z += m * _sigma(counts[0] / m)
        return m * m / (2.0 * math.log(2.0) * z)

    def upper_bound(self, sigmas: float = 3.0) -> int:
        """The estimate raised by `sigmas` standard errors: what to size a structure for."""
        return math.ceil(self.estimate() * (1.0 + sigmas * self.relative_std_error))

    def __or__(self, other: HyperLogLog) -> HyperLogLog:
        if self.p != other.p:
            raise ValueError(f"cannot merge HyperLogLog sketches of precision {self.p} and {other.p}")
        return HyperLogLog(self.p, np.maximum(self.registers, other.registers))

    def allreduce(self, comm: Any) -> None:
        """Merge the sketches of all ranks of an mpi4py communicator into each of them."""
        if comm.Get_size() == 1:
            return
        from mpi4py import MPI

        comm.Allreduce(MPI.IN_PLACE, self.registers, op=MPI.MAX)
