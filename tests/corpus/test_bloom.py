"""The blocked Bloom filter against exact Python sets: no false negatives, measured false positives
at or below the target, OR-merge equal to the filter of the union, save and memory-map back."""

import numpy as np
import pytest

from pipelines.bloom import BloomFilter, size_for
from pipelines.ngrams import (
    combine,
    ngram_hashes,
    ngram_hashes_batch,
    ngram_strings,
    word_hashes,
    word_hashes_batch,
    words,
)


@pytest.fixture(scope="module")
def train(articles, lambada) -> list[np.ndarray]:
    return [ngram_hashes(t) for t in articles + lambada[::2]]


@pytest.fixture(scope="module")
def absent(articles, lambada, wikitext) -> np.ndarray:
    """1M n-gram hashes of random 8-word sequences over the real vocabulary, checked absent exactly."""
    vocab = sorted(set(words(wikitext)))
    rng = np.random.default_rng(0)
    sequence = [vocab[i] for i in rng.integers(0, len(vocab), 1_000_007)]
    text = " ".join(sequence)
    hashes = ngram_hashes(text)
    known = {g for t in articles + lambada[::2] for g in ngram_strings(t)}
    present = [i for i, g in enumerate(ngram_strings(text)) if g in known]
    assert len(hashes) == 1_000_000
    return np.delete(hashes, present)


def test_ngram_normalisation_and_hash_agree_with_strings(articles):
    assert words("Don't  STOP! Café_au-lait 2024") == ["don", "t", "stop", "café", "au", "lait", "2024"]
    strings = [g for t in articles for g in ngram_strings(t)]
    hashes = np.concatenate([ngram_hashes(t) for t in articles])
    assert len(hashes) == len(strings)
    assert len(np.unique(hashes)) == len(set(strings))  # no collisions on real text
    assert np.array_equal(ngram_hashes("a b c d e f g h i"), combine(word_hashes("A, B c d e f g h i"), 8))
    assert len(ngram_hashes("seven words are not an eight gram")) == 0
    docs = [*articles[:30], "", "too few words", "exactly eight words in this one short line"]
    batch, counts = ngram_hashes_batch(docs)
    assert counts.tolist() == [len(ngram_strings(d)) for d in docs]
    assert np.array_equal(batch, np.concatenate([ngram_hashes(d) for d in docs]))  # never across documents


def test_compiled_word_hashing_finds_the_words_the_regex_finds(wikitext):
    # lower() lengthening a text (İ -> i + U+0307), NUL inside a text, characters past the BMP, a
    # lone surrogate, scripts without spaces between letters and words
    tricky = ["İSTANBUL ǅemal ﬁne", "a\0b c", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 😀 ok", "lone \udc80 surrogate",
              "中文 日本語 한국어", "x", ""]
    hashes, counts = word_hashes_batch(tricky)
    assert counts.tolist() == [len(words(t)) for t in tricky]
    vocab = sorted(set(words(wikitext)) | {w for t in tricky for w in words(t)})
    each = word_hashes_batch(vocab)[0]
    assert len(each) == len(vocab) and len(np.unique(each)) == len(vocab)  # one a word, all distinct
    assert np.array_equal(word_hashes(" ".join(vocab)), each)  # the same word, the same hash
    found = dict(zip(vocab, each.tolist()))
    assert hashes.tolist() == [found[w] for t in tricky for w in words(t)]


def test_no_false_negatives_and_fp_at_target(train, absent):
    items = np.unique(np.concatenate(train))
    for fp in (1e-3, 1e-8):
        bloom = BloomFilter.for_items(len(items), fp)
        bloom.add(items)
        assert bloom.contains(items).all()
        measured = bloom.contains(absent).mean()
        # 1e-3: ~1000 expected among 1M, 5 sigma is 16%; 1e-8: 0.01 expected, so none
        assert measured <= fp * 1.16 if fp > 1e-6 else measured == 0, (fp, measured)
        if fp == 1e-3:
            assert measured >= fp * 0.7  # sized for the target, not wastefully above it


def test_sizing_follows_the_target():
    bits, k, g = size_for(1e-8)
    assert 38.3 < bits <= 42 and (k, g) == (1, 3)  # a classic filter needs 38.3 bits an item
    assert size_for(1e-2)[0] < size_for(1e-3)[0] < bits
    with pytest.raises(ValueError, match="must be in"):
        size_for(0.0)


def test_merged_filters_equal_the_filter_of_the_union(train):
    n = sum(map(len, train))
    whole, left, right = (BloomFilter.for_items(n) for _ in range(3))
    for i, hashes in enumerate(train):
        whole.add(hashes)
        (left if i % 2 else right).add(hashes)
    assert left | right == whole
    assert left != whole
    with pytest.raises(ValueError, match="different shapes"):
        left | BloomFilter.for_items(n + 10_000)


def test_save_and_memory_map_back(train, tmp_path):
    bloom = BloomFilter.for_items(1000, 1e-4, ngram=8)
    bloom.add(train[0])
    bloom.save(tmp_path / "f.bloom")
    back = BloomFilter.load(tmp_path / "f.bloom")
    assert isinstance(back.blocks, np.memmap) and back == bloom and back.meta["ngram"] == 8
    assert back.contains(train[0]).all()
    data = (tmp_path / "f.bloom").read_bytes()
    (tmp_path / "cut.bloom").write_bytes(data[:-64])
    with pytest.raises(ValueError, match=r"cut.bloom: cannot load Bloom filter .*truncated"):
        BloomFilter.load(tmp_path / "cut.bloom")
    (tmp_path / "junk.bloom").write_bytes(b"x" * 100)
    with pytest.raises(ValueError, match="junk.bloom.*not a megagpt Bloom filter"):
        BloomFilter.load(tmp_path / "junk.bloom")


def test_overwritten_bits_fail_the_checksum(train, tmp_path):
    bloom = BloomFilter.for_items(20_000, 1e-8, ngram=8)
    bloom.add(train[0])
    path = tmp_path / "f.bloom"
    bloom.save(path)
    data = bytearray(path.read_bytes())
    body = len(data) - bloom.n_bits // 8
    fix = r"rebuild it with python -m pipelines\.overlap --train \.\.\. --save-filter .*f\.bloom"
    for start, junk in ((body + 1000, b"\xff" * 4096), (len(data) - 1, bytes([data[-1] ^ 1]))):
        damaged = data[:start] + junk + data[start + len(junk):]
        assert len(damaged) == len(data)
        path.write_bytes(damaged)
        with pytest.raises(ValueError, match=rf"f\.bloom: cannot load.*do not match the checksum.*{fix}"):
            BloomFilter.load(path)
        assert BloomFilter.load(path, verify=False) != bloom  # what went unnoticed before format 5
    old = b"MGBLOOM4" + data[8:]
    path.write_bytes(old)
    with pytest.raises(ValueError, match=rf"format 4 of an older megagpt.*{fix}"):
        BloomFilter.load(path)
    path.write_bytes(data)
    assert BloomFilter.load(path) == bloom


def test_items_sharing_a_block_in_one_batch_all_get_in():
    """A 4-block filter: thousands of items of one batch land in the same blocks."""
    items = np.random.default_rng(1).integers(0, 2**63, 5000, dtype=np.uint64)
    at_once, one_by_one = BloomFilter(4, 1, 3), BloomFilter(4, 1, 3)
    at_once.add(items)
    for item in items[:300]:
        one_by_one.add(item[None])
    one_by_one.add(items[300:])
    assert at_once == one_by_one and at_once.contains(items).all()
