"""Word n-grams of documents as stable 64-bit hashes, computed in compiled loops and numpy.

Normalisation follows GPT-2 section 4: lower-cased alphanumeric words (`[^\\W_]+`), so
"Don't  STOP!" is the words `don t stop`. N-grams are consecutive words inside one document,
never across two.

Hashing: each of the lower-cased text's code points is looked up in a table built from the WORD
pattern itself (so a word is exactly what the regex finds), and each word is hashed (FNV-1a over
its code points, then murmur3's fmix64 with the length);
an n-gram's hash is a position-weighted sum of its word hashes through fmix64, in numpy. No
Python call a word or a n-gram, and stable across runs and machines (unlike Python's salted
`hash()`). Two different n-grams collide with probability about 2^-64, far below any false-positive
rate a Bloom filter is asked for.

Two paths give the same hashes (tests/corpus/test_lean_build.py compares them). Small inputs (a
document: what a corpus build hashes) take numpy: all words' FNV-1a step k at once, for k up to
the longest word's length, the last few long words in plain Python. Large batches (the overlap
report's) take a numba loop over the code points, about 5x faster a character; but importing numba
and loading even its cached machine code cost 2-4 s and about 100 MiB in each process, so numba is
imported only when the first large batch comes.
"""

from __future__ import annotations

import re
from functools import lru_cache

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
COMPILED_FROM = 1 << 20  # code points of a batch from which the numba loop pays for its start-up
BATCH_CHARS = 1 << 18  # word_hashes_each's batches: the calls' overhead shared, numba not woken
_PLAIN_WORDS = 8  # when this few words are longer than the step reached, a Python loop ends them
_MASK64 = (1 << 64) - 1


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


@lru_cache(maxsize=1)
def _word_characters() -> np.ndarray:
    """A bool for every code point: does WORD match it (about 0.1 s, once a process). WORD is one
    character class repeated, so each code point is judged alone, a slice at a time: the 1.1M
    one-character strings of all code points at once would peak at about 100 MiB."""
    table = np.zeros(0x110000, dtype=np.bool_)
    for lo in range(0, len(table), 1 << 16):
        for match in WORD.finditer("".join(map(chr, range(lo, lo + (1 << 16))))):
            table[lo + match.start() : lo + match.end()] = True
    return table


def _hash_words_loop(code_points, is_word, doc_ends, hashes, counts) -> int:
    """Hash each word of the joined documents into `hashes` and count each document's words
    (compiled by numba: see _compiled; fmix64 written out, numba's constants stay uint64)."""
    n = doc = length = 0
    h = _FNV_OFFSET
    for i in range(code_points.shape[0]):
        c = code_points[i]
        if is_word[c]:
            h = (h ^ np.uint64(c)) * _FNV_PRIME
            length += 1
        elif length:
            h ^= np.uint64(length)
            h ^= h >> _U33
            h *= _FMIX1
            h ^= h >> _U33
            h *= _FMIX2
            hashes[n] = h ^ (h >> _U33)
            n += 1
            counts[doc] += 1
            h, length = _FNV_OFFSET, 0
        if i == doc_ends[doc]:
            doc += 1
    return n


@lru_cache(maxsize=1)
def _compiled():
    """_hash_words_loop compiled (its machine code cached on disk between processes)."""
    import numba

    return numba.njit(cache=True, nogil=True)(_hash_words_loop)


def _hash_words_numpy(code_points: np.ndarray, is_word: np.ndarray, doc_ends: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """What _hash_words_loop computes, in numpy: the word hashes and each document's count."""
    inside = is_word[code_points]
    starts = np.flatnonzero(inside[1:] > inside[:-1]) + 1
    if len(inside) and inside[0]:
        starts = np.r_[0, starts]
    lengths = np.flatnonzero(inside[1:] < inside[:-1]) + 1 - starts  # the batch ends with a separator
    order = np.argsort(-lengths, kind="stable")  # longest first: step k works on a prefix
    first, size = starts[order], lengths[order]
    h = np.full(len(starts), _FNV_OFFSET, np.uint64)
    wide = code_points.astype(np.uint64)
    longer = np.searchsorted(-size, -np.arange(1, (size[0] if len(size) else 0) + 1), side="right")
    k = 0
    while k < len(longer) and longer[k] > _PLAIN_WORDS:  # longer[k]: words of more than k points
        active = h[: longer[k]]
        active ^= wide[first[: longer[k]] + k]
        active *= _FNV_PRIME
        k += 1
    for i in range(longer[k] if k < len(longer) else 0):  # the few longest (a URL, an encoded blob)
        x = int(h[i])
        for c in code_points[first[i] + k : first[i] + size[i]].tolist():
            x = ((x ^ c) * int(_FNV_PRIME)) & _MASK64
        h[i] = x
    hashes = np.empty_like(h)
    hashes[order] = fmix64(h ^ size.astype(np.uint64))
    counts = np.diff(np.searchsorted(starts, doc_ends, side="right"), prepend=0)
    return hashes, counts


def word_hashes_batch(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The hashes of the normalised words of many documents, concatenated, and each one's count."""
    if not texts:
        return np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.int64)
    lowered = [t.lower() for t in texts]  # before measuring: lower() may change a text's length
    lengths = np.fromiter(map(len, lowered), dtype=np.int64, count=len(lowered))
    joined = _SEPARATOR.join(lowered) + _SEPARATOR
    code_points = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    doc_ends = np.cumsum(lengths + 1) - 1
    if len(code_points) < COMPILED_FROM:
        return _hash_words_numpy(code_points, _word_characters(), doc_ends)
    hashes = np.empty(len(code_points) // 2 + 1, dtype=np.uint64)  # a word and a separator at least
    counts = np.zeros(len(texts), dtype=np.int64)
    n = _compiled()(code_points, _word_characters(), doc_ends, hashes, counts)
    return hashes[:n], counts


def word_hashes_each(texts: list[str]) -> list[np.ndarray]:
    """word_hashes of each text, the texts hashed in batches of up to BATCH_CHARS characters (for
    4 KB documents a third of the time of one call each; a longer text is a batch of its own)."""
    out: list[np.ndarray] = []
    start = 0
    while start < len(texts):
        end, size = start + 1, len(texts[start])
        while end < len(texts) and size + len(texts[end]) <= BATCH_CHARS:
            size += len(texts[end])
            end += 1
        hashes, counts = word_hashes_batch(texts[start:end])
        out += np.split(hashes, np.cumsum(counts)[:-1])
        start = end
    return out


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
