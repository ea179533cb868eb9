"""Duplicate decisions by hash range: the document with the lowest key stays, the others go.

Documents are identified by their key (their place in the global input order, see sources.py).
Both kinds of duplicates are decided over partitions of a hash space, so any rank can decide a
partition alone, holding only that partition:

- Exact duplicates share the 16-byte hash of their normalised text (case and whitespace folded):
  in a digest range, every copy but the one with the lowest key is a duplicate.
- Near duplicates are found with MinHash LSH: signatures cut into b bands of r values, each band
  hashed to 64 bits. Documents sharing a band hash are candidates; in a band-hash range, each
  candidate is paired with the group's first document and with its predecessor in key order (2
  pairs a member, not all m^2 of a large group). A pair is an edge when the exact Jaccard
  similarity of the two documents' shingle sets reaches the threshold: the signatures' estimate
  first drops the pairs that are plainly apart (more than LOOSE_SIGMAS standard errors under the
  threshold), and only the rest have their sets compared. The estimate alone cannot decide near
  the threshold: with 128 values its standard error at 0.8 is 0.035, so 40% of the pairs at
  0.80-0.82 estimate under 0.8 (bench/dedup_recall.py). The edges of
  all ranges, few, are joined into clusters (union-find); every member of a cluster but the lowest
  key is a near duplicate. This is datatrove's staged MinHash design, with the candidates verified.
Choosing (b, r): a pair of similarity s shares a band with probability 1 - (1 - s^r)^b, an S-curve
whose knee sits near (1/b)^(1/r). datasketch picks (b, r) to minimise the false-positive plus
false-negative mass around the threshold, as if LSH alone decided: 9 x 13 at 0.8, whose knee is
at 0.84, so about 20% of pairs at Jaccard 0.85-0.9 were never compared. Here every candidate is
verified, so a false candidate costs a signature comparison (near the threshold, a set comparison)
while a missed one is lost for good: `lsh_bands` maximises the probability of candidacy at the
threshold itself, subject only to at most FAR_CANDIDATE_RATE of the pairs KNEE_MARGIN below it
becoming candidates (what bounds the verification work): 16 x 8 at 0.8 (knee 0.71, candidacy 0.95
at 0.8, 0.99 at 0.85, 0.24 at 0.6).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np

from pipelines.minhash import jaccard, jaccard_estimate
from pipelines.ngrams import fmix64

RANGE_BITS = 12  # files record where each of 4096 equal hash ranges starts; partitions are unions of them
DIGEST_RECORD = np.dtype([("d0", "<u8"), ("d1", "<u8"), ("key", "<u8")])
BAND_RECORD = np.dtype([("h", "<u8"), ("key", "<u8")])
_MIX = np.uint64(0x9E3779B97F4A7C15)


def text_digest(text: str) -> bytes:
    """Hash of the text up to case and whitespace: the exact-duplicate key (and the shard key)."""
    return hashlib.blake2b(" ".join(text.lower().split()).encode(), digest_size=16).digest()


def range_bounds(sorted_hashes: np.ndarray) -> np.ndarray:
    """Row where each of the 2^RANGE_BITS hash ranges starts in `sorted_hashes` (and the end)."""
    top = (sorted_hashes >> np.uint64(64 - RANGE_BITS)).astype(np.int64)
    return np.searchsorted(top, np.arange((1 << RANGE_BITS) + 1)).astype(np.int64)


def partition_rows(bounds: np.ndarray, part: int, parts: int) -> slice:
    """The rows of partition `part` of `parts` (parts <= 2^RANGE_BITS) in a file with `bounds`."""
    fine = 1 << RANGE_BITS
    return slice(int(bounds[part * fine // parts]), int(bounds[(part + 1) * fine // parts]))


def digest_records(keys: np.ndarray, digests: np.ndarray) -> np.ndarray:
    """(d0, d1, key) records of 16-byte digests, sorted by digest: a file's exact-dedup input."""
    halves = np.ascontiguousarray(digests).view("<u8").reshape(-1, 2)
    records = np.empty(len(keys), DIGEST_RECORD)
    records["d0"], records["d1"], records["key"] = halves[:, 0], halves[:, 1], keys
    return np.sort(records, order=["d0", "d1", "key"])


def exact_duplicate_keys(records: np.ndarray) -> np.ndarray:
    """Sorted keys of every document whose digest a lower key also has."""
    records = np.sort(records, order=["d0", "d1", "key"])
    same = (records["d0"][1:] == records["d0"][:-1]) & (records["d1"][1:] == records["d1"][:-1])
    return np.sort(records["key"][1:][same])


KNEE_MARGIN = 0.2  # pairs this far below the threshold are the ones whose candidacy costs work
FAR_CANDIDATE_RATE = 0.25  # at most this share of them become candidates
CURVE_POINTS = np.round(np.arange(0.5, 1.0001, 0.05), 2)  # similarities the manifest's curve is given at


def candidate_probability(similarity: np.ndarray | float, bands: int, rows: int) -> np.ndarray:
    """The probability that a pair of this Jaccard similarity shares at least one band."""
    return 1 - (1 - np.asarray(similarity, float) ** rows) ** bands


@lru_cache(maxsize=32)
def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm for verified candidates: the most likely
    candidacy at `threshold` with at most FAR_CANDIDATE_RATE at threshold - KNEE_MARGIN (ties: the
    fewest bands, the least work)."""
    if not 0 < threshold <= 1:
        raise ValueError(f"--near-threshold {threshold} must be in (0, 1]")
    far = max(threshold - KNEE_MARGIN, 0.0)
    best = (-1.0, 0, 0, 0)
    for rows in range(1, num_perm + 1):
        for bands in range(1, num_perm // rows + 1):
            if candidate_probability(far, bands, rows) > FAR_CANDIDATE_RATE:
                break  # more bands only raise it
            score = (round(float(candidate_probability(threshold, bands, rows)), 9), -bands)
            if score > best[:2]:
                best = (*score, bands, rows)
    if not best[2]:
        raise ValueError(f"no bands of {num_perm} MinHash values keep the candidacy at {far:.2f} under "
                         f"{FAR_CANDIDATE_RATE}; raise --num-perm or give --minhash-bands/--minhash-rows")
    return best[2], best[3]


def check_bands(bands: int, rows: int, num_perm: int) -> None:
    """Refuse a (bands, rows) that a signature of `num_perm` values cannot give."""
    if bands < 1 or rows < 1:
        raise ValueError(f"--minhash-bands {bands} and --minhash-rows {rows} must both be at least 1")
    if bands * rows > num_perm:
        raise ValueError(f"--minhash-bands {bands} x --minhash-rows {rows} = {bands * rows} MinHash values, "
                         f"but a signature has --num-perm {num_perm}; lower one of them (e.g. "
                         f"--minhash-rows {num_perm // bands}) or raise --num-perm to {bands * rows}")


def recall_curve(bands: int, rows: int) -> dict[str, float]:
    """Candidacy probability at Jaccard 0.5, 0.55, ..., 1.0: what the manifest records."""
    return {f"{s:.2f}": round(float(candidate_probability(s, bands, rows)), 4) for s in CURVE_POINTS}


def band_records(keys: np.ndarray, signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(band hash, key) records of every band of every signature, sorted by band hash."""
    check_bands(bands, rows, signatures.shape[1])
    records = np.empty((len(keys), bands), BAND_RECORD)
    for band in range(bands):
        h = np.full(len(keys), band + 1, np.uint64)  # the band's number is part of its hash
        for column in signatures[:, band * rows : (band + 1) * rows].T:
            h = fmix64((h * _MIX) ^ column.astype(np.uint64))
        records[:, band]["h"], records[:, band]["key"] = h, keys
    return np.sort(records.ravel(), order=["h", "key"])


def candidate_pairs(records: np.ndarray) -> np.ndarray:
    """(lower key, higher key) pairs of documents sharing a band hash: each member of a group
    with the group's first member and with the member before it."""
    records = np.sort(records, order=["h", "key"])
    h, keys = records["h"], records["key"]
    if len(h) < 2:
        return np.empty((0, 2), np.uint64)
    starts = np.r_[True, h[1:] != h[:-1]]
    first = keys[np.maximum.accumulate(np.where(starts, np.arange(len(h)), 0))]
    follower = ~starts
    pairs = np.concatenate([np.stack([first[follower], keys[follower]], 1),
                            np.stack([keys[:-1][follower[1:]], keys[1:][follower[1:]]], 1)])
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    return np.unique(pairs, axis=0) if len(pairs) else np.empty((0, 2), np.uint64)


LOOSE_SIGMAS = 4.0  # a pair at the threshold estimates this far under it with odds of 3 in 100,000


def plausible_pairs(pairs: np.ndarray, signature_of: Callable[[int], np.ndarray], threshold: float
                    ) -> np.ndarray:
    """The candidate pairs whose signatures' estimated Jaccard similarity is at most LOOSE_SIGMAS
    standard errors under `threshold`: the ones whose shingle sets are worth comparing."""
    if not len(pairs):
        return pairs
    num_perm = len(signature_of(int(pairs[0, 0])))
    bound = threshold - LOOSE_SIGMAS * math.sqrt(threshold * (1 - threshold) / num_perm)
    keep = [jaccard_estimate(signature_of(int(a)), signature_of(int(b))) >= bound for a, b in pairs]
    return pairs[np.array(keep, bool)]


def verified_edges(pairs: np.ndarray, shingle_set_of: Callable[[int], np.ndarray], threshold: float
                   ) -> np.ndarray:
    """The pairs whose shingle sets' exact Jaccard similarity reaches `threshold`."""
    keep = [jaccard(shingle_set_of(int(a)), shingle_set_of(int(b))) >= threshold for a, b in pairs]
    return pairs[np.array(keep, bool)] if len(pairs) else pairs


def near_duplicate_keys(edges: np.ndarray) -> np.ndarray:
    """Sorted keys of every member of an edge-connected cluster except its lowest key."""
    if not len(edges):
        return np.empty(0, np.uint64)
    nodes, inverse = np.unique(edges, return_inverse=True)
    parent = list(range(len(nodes)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving
            i = parent[i]
        return i

    for a, b in inverse.reshape(-1, 2).tolist():
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)  # nodes are sorted: the lower index is the lower key
    roots = np.array([root(i) for i in range(len(nodes))])
    return nodes[roots != np.arange(len(nodes))]
