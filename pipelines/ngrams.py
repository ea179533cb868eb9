"""Word n-grams of documents as stable 64-bit hashes, computed in compiled loops and numpy.

Normalisation follows GPT-2 section 4: lower-cased alphanumeric words (`[^\\W_]+`), so
"Don't  STOP!" is the words `don t stop`. N-grams are consecutive words inside one document,
never across two.

Hashing: the lower-cased text's code points are scanned once by a numba loop that looks each one
up in a table built from the WORD pattern itself (so a word is exactly what the regex finds) and
hashes each word as it ends (FNV-1a over code points, then murmur3's fmix64 with the length);
an n-gram's hash is a position-weighted sum of its word hashes through fmix64, in numpy. No
Python call a word or a n-gram, and stable across runs and machines (unlike Python's salted
`hash()`). Two different n-grams collide with probability about 2^-64, far below any false-positive
rate a Bloom filter is asked for.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numba
import numpy as np

WORD = re.compile(r"[^\W_]+")

# odd 64-bit constants, one a position in the n-gram (enough for n <= 16)
_POSITION_WEIGHTS = np.array([
    0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93,
    0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53, 0x94D049BB133111EB, 0xBF58476D1CE4E5B9,
    0x27D4EB2F165667C5, 0x85EBCA77C2B2AE63, 0xA0761D6478BD642F, 0xE7037ED1A0B428DB,
    0x8EBC6AF09C88C6E3, 0x589965CC75374CC3, 0x1D8E4E27C47D124F, 0xF1357AEA2E62A9C5,
], dtype=np.uint64)
MAX_N = len(_POSITION_WEIGHTS)
_FMIX1, _FMIX2, _U33 = np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53), np.uint64(33)
_FNV_OFFSET, _FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)
_SEPARATOR = "\0"  # between the documents of a batch: not a word character, so words end there


def words(text: str) -> list[str]:
    """The paper's normalised words: lower-case runs of letters and digits."""
    return WORD.findall(text.lower())


def fmix64(h: np.ndarray) -> np.ndarray:
    """murmur3's 64-bit finaliser: every input bit affects every output bit (uint64 arrays wrap)."""
    h = h ^ (h >> _U33)
    h = h * _FMIX1
    h = h ^ (h >> _U33)
    h = h * _FMIX2
    return h ^ (h >> _U33)


@numba.njit(inline="always")
def fmix64_scalar(h: np.uint64) -> np.uint64:
    """fmix64 of one uint64, for compiled loops (numba: constants must stay uint64)."""
    h ^= h >> _U33
    h *= _FMIX1
    h ^= h >> _U33
    h *= _FMIX2
    return h ^ (h >> _U33)


@lru_cache(maxsize=1)
def _word_characters() -> np.ndarray:
    """A bool for every code point: does WORD match it (about 0.1 s, once a process)."""
    table = np.zeros(0x110000, dtype=np.bool_)
    for match in WORD.finditer("".join(map(chr, range(0x110000)))):
        table[match.start() : match.end()] = True
    return table


@numba.njit(cache=True, nogil=True)
def _hash_words(code_points, is_word, doc_ends, hashes, counts) -> int:
    """Hash each word of the joined documents into `hashes` and count each document's words."""
    n = doc = length = 0
    h = _FNV_OFFSET
    for i in range(code_points.shape[0]):
        c = code_points[i]
        if is_word[c]:
            h = (h ^ np.uint64(c)) * _FNV_PRIME
            length += 1
        elif length:
            hashes[n] = fmix64_scalar(h ^ np.uint64(length))
            n += 1
            counts[doc] += 1
            h, length = _FNV_OFFSET, 0
        if i == doc_ends[doc]:
            doc += 1
    return n


def word_hashes_batch(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The hashes of the normalised words of many documents, concatenated, and each one's count."""
    if not texts:
        return np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.int64)
    lowered = [t.lower() for t in texts]  # before measuring: lower() may change a text's length
    lengths = np.fromiter(map(len, lowered), dtype=np.int64, count=len(lowered))
    joined = _SEPARATOR.join(lowered) + _SEPARATOR
    code_points = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    hashes = np.empty(len(code_points) // 2 + 1, dtype=np.uint64)  # a word and a separator at least
    counts = np.zeros(len(texts), dtype=np.int64)
    n = _hash_words(code_points, _word_characters(), np.cumsum(lengths + 1) - 1, hashes, counts)
    return hashes[:n], counts


def word_hashes(text: str) -> np.ndarray:
    """The hash of each normalised word of `text`, in order."""
    return word_hashes_batch([text])[0]


def ngram_hashes(text: str, n: int = 8) -> np.ndarray:
    """One uint64 for each of the len(words) - n + 1 word n-grams of `text` (empty if fewer words)."""
    return combine(word_hashes(text), n)


def ngram_hashes_batch(texts: list[str], n: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The n-gram hashes of many documents at once, and how many each document has.

    Same values as ngram_hashes on each text, concatenated; the work is done once for the batch
    (a short document costs about as much call overhead as its hashing otherwise).
    """
    hashes, lengths = word_hashes_batch(texts)
    combined = combine(hashes, n)
    counts = np.maximum(lengths - n + 1, 0)
    # the n-gram starting at word i of the batch is one of its document's when it ends there too
    offset_in_doc = np.arange(len(hashes)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    inside = offset_in_doc < np.repeat(counts, lengths)
    return combined[inside[: len(combined)]], counts


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
