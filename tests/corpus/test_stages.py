"""Filter, dedup and decontamination stages on real articles with planted duplicates and leaks."""

import json
import re

import numpy as np
import pytest
import zstandard

from pipelines.build import build, main
from pipelines.dedup import (
    band_records,
    candidate_pairs,
    digest_records,
    exact_duplicate_keys,
    near_duplicate_keys,
    partition_rows,
    plausible_pairs,
    range_bounds,
    text_digest,
    verified_edges,
)
from pipelines.filters import FilterConfig, blocked_domain, letters_and_spaces, reject_reason
from pipelines.minhash import MinHasher, jaccard_estimate, shingle_sets
from pipelines.ngrams import ngram_strings
from tests.corpus.conftest import LAMBADA, WIKITEXT


def near_copy(text: str) -> str:
    """The same article lightly edited: a word in 250 swapped (at least 2) and a footer added."""
    words = text.split(" ")
    changes = max(2, len(words) // 250)
    for i in range(changes):
        words[(i + 1) * len(words) // (changes + 2)] = "edited"
    return " ".join(words) + "\n\nSubscribe to our newsletter for more stories like this one."


def test_minhash_estimates_jaccard(articles):
    hasher = MinHasher(num_perm=256)
    for text in articles[:10]:
        other = near_copy(text)
        a, b = (set(ngram_strings(t, 5)) for t in (text, other))
        exact = len(a & b) / len(a | b)
        estimate = jaccard_estimate(hasher.signature(text), hasher.signature(other))
        assert estimate == pytest.approx(exact, abs=0.1)
    assert hasher.signature("!!! ...") is None


def test_signatures_of_a_batch_equal_one_at_a_time(articles, wikitext):
    """Batched word hashing (what a build's map step does) gives each text's own signature, for
    texts without words and texts longer than a batch too."""
    hasher = MinHasher()
    texts = [*articles[:80], "", "!!! ...", wikitext[:400_000], *articles[80:90]]
    batched = hasher.signatures(texts)
    assert len(batched) == len(texts) and batched[81] is None
    for text, signature in zip(texts, batched):
        alone = MinHasher().signature(text)
        assert (alone is None and signature is None) or (alone == signature).all()


def test_planted_duplicates_go_and_distinct_pages_stay(articles):
    base = articles[:60]
    half = [t[: len(t) // 2] for t in base[:5]]  # Jaccard about 0.5: not a near duplicate at 0.8
    exact = [" ".join(t.upper().split()) for t in base[5:10]]
    near = [near_copy(t) for t in base[10:60] if len(t.split()) >= 350][:10]
    for original, copy in zip([t for t in base[10:60] if len(t.split()) >= 350], near):
        a, b = (set(ngram_strings(t, 5)) for t in (original, copy))
        assert len(a & b) / len(a | b) > 0.88  # really near: the test is about finding them
    docs = base + half + exact + near
    keys = np.arange(len(docs), dtype=np.uint64)
    digests = np.frombuffer(b"".join(map(text_digest, docs)), np.uint8).reshape(-1, 16)
    duplicates = exact_duplicate_keys(digest_records(keys, digests))
    assert duplicates.tolist() == list(range(65, 70))
    hasher = MinHasher()
    signatures = np.stack([hasher.signature(t) for t in docs])
    pairs = candidate_pairs(band_records(keys, signatures, 16, 8))
    pairs = plausible_pairs(pairs, signatures.__getitem__, 0.8)
    edges = verified_edges(pairs, shingle_sets(docs, 5).__getitem__, 0.8)
    near_keys = sorted(set(near_duplicate_keys(edges).tolist()) - set(duplicates.tolist()))
    assert [docs[k] for k in near_keys] == near  # every near copy, nothing else


@pytest.mark.parametrize("parts", [2, 3, 7])
def test_decisions_by_hash_range_equal_the_whole(articles, parts):
    """Deciding each hash range alone (as the ranks of a build do) finds what one pass over all finds."""
    docs = articles[:40] + [" ".join(t.upper().split()) for t in articles[:8]]
    docs += [near_copy(t) for t in articles[8:20]]
    rng = np.random.default_rng(0)
    keys = rng.permutation(len(docs)).astype(np.uint64)  # keys need not follow the list order
    digests = np.frombuffer(b"".join(map(text_digest, docs)), np.uint8).reshape(-1, 16)
    hasher = MinHasher()
    signatures = np.stack([hasher.signature(t) for t in docs])
    signature_of = dict(zip(keys.tolist(), signatures)).__getitem__
    set_of = dict(zip(keys.tolist(), shingle_sets(docs, 5))).__getitem__
    exact, bands = digest_records(keys, digests), band_records(keys, signatures, 16, 8)

    def edges(records: np.ndarray) -> np.ndarray:
        return verified_edges(plausible_pairs(candidate_pairs(records), signature_of, 0.8), set_of, 0.8)

    whole_exact = exact_duplicate_keys(exact)
    whole_edges = edges(bands)
    exact_bounds, band_bounds = range_bounds(exact["d0"]), range_bounds(bands["h"])
    ranges = [(partition_rows(exact_bounds, p, parts), partition_rows(band_bounds, p, parts))
              for p in range(parts)]
    split_exact = np.concatenate([exact_duplicate_keys(exact[rows]) for rows, _ in ranges])
    split_edges = np.concatenate([edges(bands[rows]) for _, rows in ranges])
    assert len(whole_exact) == 8 and sorted(split_exact.tolist()) == whole_exact.tolist()
    assert near_duplicate_keys(split_edges).tolist() == near_duplicate_keys(whole_edges).tolist()
    assert len(set(near_duplicate_keys(whole_edges).tolist()) - set(whole_exact.tolist())) >= 10


def test_filters_give_reasons():
    config = FilterConfig()
    prose = "Plain sentences of ordinary prose make a document worth keeping for training. " * 4
    assert reject_reason(prose, None, config) is None
    assert reject_reason(prose[:150], None, config) == "too_short"
    table = " | ".join(f"{i:>6} {i * 3.14:>8.2f}" for i in range(40))
    assert reject_reason(table, None, config) == "not_mostly_text"
    wiki = "https://en.wikipedia.org/wiki/GPT-2"
    assert reject_reason(prose, wiki, config) == "blocked_domain:wikipedia.org"
    assert reject_reason(prose, "https://notwikipedia.org/x", config) is None
    assert blocked_domain("de.m.wikipedia.org/wiki/X", ["wikipedia.org"]) == "wikipedia.org"
    assert blocked_domain("https://example.com/wikipedia.org", ["wikipedia.org"]) is None


def test_letter_and_space_counts_equal_the_regexes(articles, wikitext):
    """The table lookup counts what the regexes [^\\W\\d_] and \\s match, beyond the BMP too."""
    rng = np.random.default_rng(0)
    odd = "\u00bd\u00b2\u0663\u3000\u2028\u00a0_\U0001d400\U0001f600\ud800\u4e2d\u0301\t\x0c"
    texts = [*articles[:50], wikitext[:20000], odd,
             *("".join(rng.choice(list(odd + "ab 1."), 30)) for _ in range(300))]
    for text in texts:
        letters = len(re.findall(r"[^\W\d_]", text))
        assert letters_and_spaces(text) == (letters, len(re.findall(r"\s", text))), repr(text[:60])


def test_build_counts_every_drop_by_reason(articles, lambada, tmp_path):
    """jsonl.zst input with planted duplicates, Wikipedia pages, junk and eval leaks, end to end."""
    base = articles[:40]
    leaked = [articles[100 + i] + "\n\n" + lambada[i] for i in range(3)]  # an eval passage pasted in
    wiki_page = re.split(r"\n = [^=]", WIKITEXT.read_text())[3]  # an article of WikiText-2
    records = [{"text": t, "url": f"https://news.example/{i}"} for i, t in enumerate(base)]
    records += [{"text": " ".join(t.lower().split())} for t in base[:4]]
    records += [{"text": near_copy(t)} for t in base[4:40] if len(t.split()) >= 350][:6]
    records += [{"text": t} for t in leaked]
    records += [{"text": articles[103] + "\n\n" + wiki_page}]
    records += [{"text": articles[104], "url": "https://en.wikipedia.org/wiki/Some_page"}]
    records += [{"text": "0.5 1.5 2.5 | 3.5 ; 4.5 " * 30}, {"text": "short"}]
    raw = tmp_path / "docs.jsonl.zst"
    raw.write_bytes(zstandard.ZstdCompressor().compress(
        "".join(json.dumps(r) + "\n" for r in records).encode()))
    (tmp_path / "latin1.txt").write_bytes(articles[50].encode("utf-8") + "café".encode("latin-1"))
    manifest = build([raw, tmp_path / "latin1.txt"], tmp_path / "out", vocab_size=700, valid_fraction=0.0,
                     decontaminate={"lambada": LAMBADA, "wikitext2": WIKITEXT})
    stages = manifest["stages"]
    assert stages["read"] == {"in": 58, "out": 57, "dropped": {"bad_utf8": 1}}
    assert stages["filter"]["dropped"] == {"blocked_domain:wikipedia.org": 1, "not_mostly_text": 1,
                                           "too_short": 1}
    assert stages["exact_dedup"]["dropped"] == {"duplicate": 4}
    assert stages["near_dedup"]["dropped"] == {"near_duplicate": 6}
    assert stages["decontaminate"]["dropped"] == {"contaminated:lambada": 3, "contaminated:wikitext2": 1}
    assert stages["decontaminate"]["out"] == manifest["documents"] == 40
    assert manifest["settings"]["decontaminate"] == {"lambada": str(LAMBADA), "wikitext2": str(WIKITEXT)}


def test_cli_wires_filters_and_decontamination(articles, lambada, tmp_path, capsys):
    records = [{"text": t, "url": f"https://blog.example.org/{i}"} for i, t in enumerate(articles[:3])]
    records += [{"text": t} for t in articles[3:12]] + [{"text": articles[12] + "\n\n" + lambada[5]}]
    raw = tmp_path / "docs.jsonl"
    raw.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "out"
    assert main(["--input", str(raw), "--output", str(out), "--train-tokenizer", "--vocab-size", "600",
                 "--valid-fraction", "0", "--block-domain", "example.org",
                 "--decontaminate", f"lambada={LAMBADA}"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["filter"]["dropped"] == {"blocked_domain:example.org": 3}
    assert manifest["stages"]["decontaminate"]["dropped"] == {"contaminated:lambada": 1}
    assert manifest["documents"] == 9
    assert main(["--input", str(raw), "--output", str(tmp_path / "o2"), "--train-tokenizer",
                 "--decontaminate", "lambada"]) == 2
    assert "--decontaminate 'lambada': expected NAME=PATH" in capsys.readouterr().err
