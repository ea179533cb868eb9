"""The overlap checker against an exact Python-set computation on real text (LAMBADA, WikiText-2)."""

import json

import numpy as np
import pytest

from pipelines.bloom import BloomFilter
from pipelines.build import build
from pipelines.ngrams import ngram_hashes, ngram_strings
from pipelines.overlap import build_filter, iter_texts, main, overlap
from tests.corpus.conftest import LAMBADA, ROOT, WIKITEXT, run_mpi, write_jsonl


@pytest.fixture(scope="module")
def train_file(tmp_path_factory, articles, lambada, wikitext) -> tuple:
    """The sample articles plus planted eval text: every 7th LAMBADA passage and a third of WikiText-2."""
    texts = articles + lambada[::7] + [wikitext[: len(wikitext) // 3]]
    return write_jsonl(tmp_path_factory.mktemp("train") / "train.jsonl", texts), texts


def exact(train_texts: list[str], eval_texts: list[str]) -> tuple[int, int, list[float]]:
    known = {g for t in train_texts for g in ngram_strings(t)}
    found = total = 0
    per_doc = []
    for text in eval_texts:
        grams = ngram_strings(text)
        if grams:
            hits = sum(g in known for g in grams)
            found, total = found + hits, total + len(grams)
            per_doc.append(hits / len(grams))
    return found, total, per_doc


def test_overlap_equals_the_exact_set_figure(train_file, lambada, wikitext):
    path, texts = train_file
    bloom = build_filter([path])
    for eval_texts in (lambada, [wikitext]):
        report = overlap(bloom, iter(eval_texts))
        found, total, per_doc = exact(texts, eval_texts)
        assert report["ngrams"] == total
        # no false negatives; at fp 1e-8 over <300k queries, a false positive has odds ~0.3%
        assert found <= report["found"] <= found + 1
        assert report["per_document"]["mean"] == pytest.approx(np.mean(per_doc), abs=1e-5)
        assert report["documents"] == len(per_doc)
    assert 0.1 < overlap(bloom, iter(lambada))["overlap"] < 0.2  # 1/7 of it was planted


def test_cli_json_saved_filter_and_shard_folder(train_file, articles, tmp_path, capsys):
    path, _ = train_file
    evals = ["--eval", f"lambada={LAMBADA}", f"wikitext2={WIKITEXT}"]
    assert main(["--train", str(path), *evals, "--json", str(tmp_path / "a.json"),
                 "--save-filter", str(tmp_path / "f.bloom")]) == 0
    table = capsys.readouterr().out
    assert "lambada" in table and "wikitext2" in table and "8-grams" in table
    assert main(["--filter", str(tmp_path / "f.bloom"), *evals, "--json", str(tmp_path / "b.json")]) == 0
    first = json.loads((tmp_path / "a.json").read_text())
    assert first == json.loads((tmp_path / "b.json").read_text())
    assert set(first) == {"lambada", "wikitext2"} and first["wikitext2"]["documents"] == 1

    # a shard folder is decoded with its tokenizer: same n-grams as the text it was built from
    docs = write_jsonl(tmp_path / "articles.jsonl", articles[:40])
    build([docs], tmp_path / "shards", vocab_size=600, valid_fraction=0.0, min_chars=1)
    decoded = list(iter_texts(tmp_path / "shards"))
    grams = lambda texts: sorted(tuple(ngram_strings(t)) for t in texts)
    assert grams(decoded) == grams(iter_texts(docs))
    assert list(iter_texts(tmp_path / "shards", rank=1, size=2)) == decoded[1::2]  # an MPI rank's share


def test_cli_errors_name_the_option(tmp_path, capsys):
    assert main(["--train", str(LAMBADA), "--eval", "lambada"]) == 2
    assert "--eval 'lambada': expected NAME=PATH" in capsys.readouterr().err
    assert main(["--train", str(LAMBADA), "--eval", f"x={tmp_path / 'none'}"]) == 2
    assert "none does not exist" in capsys.readouterr().err
    html = ROOT / "data/sample/html"
    assert main(["--train", str(html), "--eval", f"l={LAMBADA}"]) == 2
    assert "is HTML; build a corpus from it first" in capsys.readouterr().err


@pytest.mark.slow
def test_two_mpi_ranks_report_what_one_does(train_file, tmp_path):
    path, _ = train_file
    for ranks in (1, 2):
        run_mpi(ranks, "pipelines.overlap", "--train", str(path), "--eval", f"lambada={LAMBADA}",
                f"wikitext2={WIKITEXT}", "--save-filter", str(tmp_path / f"{ranks}.bloom"),
                "--json", str(tmp_path / f"{ranks}.json"))
    one, two = (json.loads((tmp_path / f"{r}.json").read_text()) for r in (1, 2))
    assert one == two
    # the same documents, hashed on two ranks and OR-merged, give the same bits; the 2-rank
    # filter is sized for the sum of per-rank distinct counts, so compare membership, not bytes
    f1, f2 = BloomFilter.load(tmp_path / "1.bloom"), BloomFilter.load(tmp_path / "2.bloom")
    hashes = np.concatenate([ngram_hashes(t) for t in iter_texts(path)])
    assert f1.contains(hashes).all() and f2.contains(hashes).all()
    assert f2.n_blocks >= f1.n_blocks
