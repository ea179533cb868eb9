"""Duplicate decisions by hash range: the document with the lowest key stays, the others go.

Documents are identified by their key (their place in the global input order, see sources.py).
Both kinds of duplicates are decided over partitions of a hash space, so any rank can decide a
partition alone, holding only that partition:

- Exact duplicates share the 16-byte hash of their normalised text (case and whitespace folded):
  in a digest range, every copy but the one with the lowest key is a duplicate.
- Near duplicates are found with MinHash LSH: signatures cut into b bands of r values, each band
  hashed to 64 bits. Documents sharing a band hash are candidates; in a band-hash range, each
  candidate is paired with the group's first document and with its predecessor in key order (2
  pairs a member, not all m^2 of a large group), and a pair is an edge when the signatures'
  estimated Jaccard similarity reaches the threshold. The edges of all ranges, few, are joined into
  clusters (union-find); every member of a cluster but the lowest key is a near duplicate. This
  is datatrove's staged MinHash design, with the candidate pairs verified.
(b, r) is chosen, as datasketch does, to minimise the false-positive plus false-negative
probability mass around the threshold.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np

from pipelines.minhash import jaccard_estimate
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


def band_records(keys: np.ndarray, signatures: np.ndarray, threshold: float) -> np.ndarray:
    """(band hash, key) records of every band of every signature, sorted by band hash."""
    bands, rows = lsh_bands(threshold, signatures.shape[1])
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


def verified_edges(pairs: np.ndarray, signature_of, threshold: float) -> np.ndarray:
    """The candidate pairs whose signatures' estimated Jaccard similarity reaches `threshold`."""
    keep = [jaccard_estimate(signature_of(int(a)), signature_of(int(b))) >= threshold for a, b in pairs]
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
