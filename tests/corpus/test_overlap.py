"""The overlap checker against an exact Python-set computation on real text (LAMBADA, WikiText-2)."""

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from pipelines.bloom import BLOCK_BITS, BloomFilter
from pipelines.build import build
from pipelines.mpi import LocalComm
from pipelines.ngrams import ngram_hashes, ngram_hashes_batch, ngram_strings
from pipelines.overlap import build_filter, iter_texts, load_filter, main, overlap, parse_bytes, save_filter
from pipelines.partitioned import PartitionedBloom, part_of
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
    # the ranks' distinct-count sketches merge into the sketch of all documents, so both runs size
    # the same filter, and the same documents hashed on two ranks and OR-merged give the same bits
    f1, f2 = BloomFilter.load(tmp_path / "1.bloom"), BloomFilter.load(tmp_path / "2.bloom")
    hashes = np.concatenate([ngram_hashes(t) for t in iter_texts(path)])
    assert f1.contains(hashes).all() and f1 == f2


def whole_filter_bytes(path) -> int:
    return build_filter([path], comm=LocalComm()).n_blocks * BLOCK_BITS // 8


@pytest.mark.slow
def test_partitioned_filter_on_two_ranks_reports_what_the_whole_one_does(train_file, lambada, wikitext,
                                                                         tmp_path, capsys):
    path, texts = train_file
    evals = ["--eval", f"lambada={LAMBADA}", f"wikitext2={WIKITEXT}"]
    assert main(["--train", str(path), *evals, "--json", str(tmp_path / "whole.json")]) == 0
    budget = str(whole_filter_bytes(path) * 3 // 4)  # the whole filter does not fit; half of it does
    run_mpi(2, "pipelines.overlap", "--train", str(path), *evals, "--max-memory", budget,
            "--save-filter", str(tmp_path / "f"), "--json", str(tmp_path / "parts.json"))
    assert sorted(p.name for p in tmp_path.glob("f*")) == ["f.part0of2", "f.part1of2"]
    whole = json.loads((tmp_path / "whole.json").read_text())
    assert json.loads((tmp_path / "parts.json").read_text()) == whole
    for name, eval_texts in (("lambada", lambada), ("wikitext2", [wikitext])):
        found, total, _ = exact(texts, eval_texts)
        assert whole[name]["ngrams"] == total and found <= whole[name]["found"] <= found + 1

    # the saved parts answer the same on one process (it maps both) and on two ranks (one each)
    assert main(["--filter", str(tmp_path / "f"), *evals, "--json", str(tmp_path / "one.json")]) == 0
    run_mpi(2, "pipelines.overlap", "--filter", str(tmp_path / "f"), *evals,
            "--json", str(tmp_path / "two.json"))
    for reloaded in ("one.json", "two.json"):
        assert json.loads((tmp_path / reloaded).read_text()) == whole


def test_a_filter_too_big_for_the_ranks_is_refused(train_file, capsys):
    path, _ = train_file
    evals = ["--eval", f"lambada={LAMBADA}"]
    budget = whole_filter_bytes(path) * 3 // 4
    assert main(["--train", str(path), *evals, "--max-memory", str(budget)]) == 2
    assert "more than 1 rank(s) can hold; run at least 2 ranks (mpiexec -n 2" in capsys.readouterr().err
    assert main(["--train", str(path), *evals, "--max-memory", "10"]) == 2
    assert "--max-memory 10 bytes is less than one 64-byte block" in capsys.readouterr().err
    assert main(["--train", str(path), *evals, "--max-memory", "2X"]) == 2
    err = capsys.readouterr().err
    assert "--max-memory '2X': expected a number of bytes with an optional K, M or G suffix" in err
    assert parse_bytes("2G", "--max-memory") == 2 << 30 and parse_bytes("1.5k", "--max-memory") == 1536
    assert main(["--filter", "f.bloom", *evals, "--max-memory", "2G"]) == 2
    assert "--max-memory sizes a filter built from --train" in capsys.readouterr().err


def test_partitioned_filter_in_one_process(train_file, lambada, tmp_path):
    """Three parts owned by one process: no false negatives, saved and loaded back, bad sets refused."""
    path, texts = train_file
    train = np.concatenate([ngram_hashes(t) for t in texts])
    meta = {"ngram": 8}
    parts = {i: BloomFilter(700, 1, 3, {**meta, "part": i, "parts": 3, "filter_id": "a"}) for i in range(3)}
    bloom = PartitionedBloom(parts, 3, 1, 3, 700, meta, LocalComm())
    bloom.add(train)
    assert bloom.contains(train).all()
    share = np.bincount(part_of(train, 3), minlength=3) / len(train)
    assert np.all(np.abs(share - 1 / 3) < 0.01)  # every part gets a third of the items
    save_filter(bloom, tmp_path / "f", LocalComm())
    back = load_filter(tmp_path / "f", 8)
    queries = ngram_hashes_batch(lambada)[0]
    assert np.array_equal(back.contains(queries), bloom.contains(queries))
    assert back.n_blocks == 2100 and back.meta == meta

    part1 = (tmp_path / "f.part1of3").read_bytes()
    (tmp_path / "f.part1of3").unlink()
    with pytest.raises(FileNotFoundError, match=r"f\.part1of3 missing; rebuild it with"):
        load_filter(tmp_path / "f", 8)
    (tmp_path / "f.part1of3").write_bytes((tmp_path / "f.part0of3").read_bytes())
    with pytest.raises(ValueError, match=r"f\.part1of3 says it is part 0 of 3 \(renamed\?\)"):
        load_filter(tmp_path / "f", 8)
    (tmp_path / "f.part0of2").write_bytes(part1)
    with pytest.raises(ValueError, match=r"parts of 2 filters are there \(split in \[2, 3\] parts\)"):
        load_filter(tmp_path / "f", 8)
    save_filter(build_filter([path], comm=LocalComm()), tmp_path / "f", LocalComm())  # a whole one
    assert sorted(p.name for p in tmp_path.glob("f*")) == ["f"]  # the stale parts are gone


def test_a_damaged_saved_filter_is_an_error_not_a_figure(train_file, tmp_path, capsys):
    path, _ = train_file
    evals = ["--eval", f"lambada={LAMBADA}"]
    assert main(["--train", str(path), *evals, "--save-filter", str(tmp_path / "f.bloom")]) == 0
    data = bytearray((tmp_path / "f.bloom").read_bytes())
    data[-100_000:] = b"\xff" * 100_000  # bits overwritten: the filter would say "present" to most
    (tmp_path / "f.bloom").write_bytes(data)
    capsys.readouterr()
    assert main(["--filter", str(tmp_path / "f.bloom"), *evals]) == 2
    err = capsys.readouterr().err
    assert "f.bloom: cannot load Bloom filter (its bits do not match the checksum" in err
    fix = f"rebuild it with python -m pipelines.overlap --train ... --save-filter {tmp_path / 'f.bloom'}"
    assert fix in err


@pytest.fixture()
def shard_folder(articles, tmp_path) -> Path:
    docs = write_jsonl(tmp_path / "articles.jsonl", articles[:40])
    build([docs], tmp_path / "shards", vocab_size=600, valid_fraction=0.0, min_chars=1,
          max_shard_tokens=5000)
    return tmp_path / "shards"


def cut_at_a_sample(shard: Path) -> None:
    """Cut a shard at the start of a sample: tarfile then reads the samples before it, quietly."""
    with tarfile.open(shard) as tar:
        starts = [m.offset for m in tar.getmembers() if m.name.endswith(".tokens.npy")]
    shard.write_bytes(shard.read_bytes()[: starts[len(starts) // 2]])


def test_a_truncated_or_altered_shard_is_refused_by_name(shard_folder, capsys):
    manifest = json.loads((shard_folder / "manifest.json").read_text())
    assert len(manifest["shards"]) >= 3
    evals = ["--eval", f"lambada={LAMBADA}"]
    first, second = (shard_folder / s["name"] for s in manifest["shards"][:2])
    original = first.read_bytes()
    cut_at_a_sample(first)
    assert main(["--train", str(shard_folder), *evals]) == 2
    assert f"{first} does not match its sha256" in capsys.readouterr().err
    first.write_bytes(original)
    altered = bytearray(second.read_bytes())
    altered[700] ^= 1  # inside the first sample's tokens: the tar still reads
    second.write_bytes(altered)
    assert main(["--train", str(shard_folder), *evals]) == 2
    assert f"{second} does not match its sha256" in capsys.readouterr().err


def test_a_truncated_shard_without_a_checksum_is_refused_by_its_count(shard_folder, capsys, caplog):
    manifest = json.loads((shard_folder / "manifest.json").read_text())
    for shard in manifest["shards"]:
        del shard["sha256"]  # as a folder built before shards had checksums
    (shard_folder / "manifest.json").write_text(json.dumps(manifest))
    first = shard_folder / manifest["shards"][0]["name"]
    cut_at_a_sample(first)
    assert main(["--train", str(shard_folder), "--eval", f"lambada={LAMBADA}"]) == 2
    assert f"{first} holds " in capsys.readouterr().err
    assert "lists no sha256 for" in caplog.text
