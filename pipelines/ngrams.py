"""Word n-grams of a document as stable 64-bit hashes, computed with numpy a document at a time.

Normalisation follows GPT-2 section 4: lower-cased alphanumeric words (`[^\\W_]+`), so
"Don't  STOP!" is the words `don t stop`. N-grams are consecutive words inside one document,
never across two.

Hashing: each word is hashed once with xxh3-64 (stable across runs and machines, unlike Python's
salted `hash()`), then an n-gram's hash is a position-weighted sum of its word hashes passed
through the murmur3 64-bit finaliser, all in numpy. This is one Python call a word instead of
building and hashing a string a n-gram; two different n-grams collide with probability about
2^-64, far below any false-positive rate a Bloom filter is asked for.
"""

from __future__ import annotations

import re

import numpy as np
import xxhash

WORD = re.compile(r"[^\W_]+")

# odd 64-bit constants, one a position in the n-gram (enough for n <= 16)
_POSITION_WEIGHTS = np.array([
    0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93,
    0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53, 0x94D049BB133111EB, 0xBF58476D1CE4E5B9,
    0x27D4EB2F165667C5, 0x85EBCA77C2B2AE63, 0xA0761D6478BD642F, 0xE7037ED1A0B428DB,
    0x8EBC6AF09C88C6E3, 0x589965CC75374CC3, 0x1D8E4E27C47D124F, 0xF1357AEA2E62A9C5,
], dtype=np.uint64)
MAX_N = len(_POSITION_WEIGHTS)
_HASH_CACHE: dict[str, int] = {}
_CACHE_LIMIT = 1 << 21  # words; about 250 MB at most


def words(text: str) -> list[str]:
    """The paper's normalised words: lower-case runs of letters and digits."""
    return WORD.findall(text.lower())


def fmix64(h: np.ndarray) -> np.ndarray:
    """murmur3's 64-bit finaliser: every input bit affects every output bit (uint64 arrays wrap)."""
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def word_hashes(text: str) -> np.ndarray:
    """xxh3-64 of each normalised word of `text`, in order.

    Words follow Zipf's law, so a cache of hashes already computed answers most of them with a
    dict lookup (about 3x faster than hashing each); it is emptied when it reaches _CACHE_LIMIT.
    """
    ws = words(text)
    if len(_HASH_CACHE) > _CACHE_LIMIT:
        _HASH_CACHE.clear()
    for w in set(ws).difference(_HASH_CACHE):
        _HASH_CACHE[w] = xxhash.xxh3_64_intdigest(w.encode())
    return np.fromiter(map(_HASH_CACHE.__getitem__, ws), dtype=np.uint64, count=len(ws))


def ngram_hashes(text: str, n: int = 8) -> np.ndarray:
    """One uint64 for each of the len(words) - n + 1 word n-grams of `text` (empty if fewer words)."""
    return combine(word_hashes(text), n)


def ngram_hashes_batch(texts: list[str], n: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The n-gram hashes of many documents at once, and how many each document has.

    Same values as ngram_hashes on each text, concatenated; the numpy work is done once for the
    batch (a short document costs about as much numpy overhead as its hashing otherwise).
    """
    per_doc = [words(t) for t in texts]
    lengths = np.fromiter(map(len, per_doc), dtype=np.int64, count=len(per_doc))
    everything = [w for ws in per_doc for w in ws]
    if len(_HASH_CACHE) > _CACHE_LIMIT:
        _HASH_CACHE.clear()
    for w in set(everything).difference(_HASH_CACHE):
        _HASH_CACHE[w] = xxhash.xxh3_64_intdigest(w.encode())
    hashes = combine(np.fromiter(map(_HASH_CACHE.__getitem__, everything), np.uint64, len(everything)), n)
    counts = np.maximum(lengths - n + 1, 0)
    # the n-gram starting at word i of the batch is one of its document's when it ends there too
    offset_in_doc = np.arange(len(everything)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    inside = offset_in_doc < np.repeat(counts, lengths)
    return hashes[inside[: len(hashes)]], counts


def combine(hashes: np.ndarray, n: int) -> np.ndarray:
    """N-gram hashes from consecutive word hashes (see the module docstring)."""
    if not 1 <= n <= MAX_N:
        raise ValueError(f"n-gram size {n} must be between 1 and {MAX_N}")
    count = len(hashes) - n + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint64)
    acc = hashes[:count] * _POSITION_WEIGHTS[0]
    for i in range(1, n):
        acc += hashes[i : i + count] * _POSITION_WEIGHTS[i]
    return fmix64(acc ^ np.uint64(n))


def ngram_strings(text: str, n: int = 8) -> list[str]:
    """The n-grams as space-joined strings: the exact reference the hashes are tested against."""
    ws = words(text)
    return [" ".join(ws[i : i + n]) for i in range(len(ws) - n + 1)]
