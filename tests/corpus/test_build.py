"""The corpus build end to end on real pages: counts reconcile, output is deterministic and decodes back."""

import gzip
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from megagpt.formats.shards import read_manifest, read_shard
from megagpt.formats.tokenizer import Tokenizer
from pipelines.build import build, main
from tests.corpus.conftest import run_mpi

PAGES = sorted((Path(__file__).resolve().parents[2] / "data/sample/html").glob("*.html.gz"))[:12]


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """Twelve real pages, one of them twice, plus a jsonl with good, short, duplicate and broken lines."""
    folder = tmp_path_factory.mktemp("raw")
    for page in PAGES:
        shutil.copy(page, folder)
    (folder / "copy").mkdir()
    shutil.copy(PAGES[0], folder / "copy" / "same-page.html.gz")
    long_text = "A line of plain text that is long enough to keep. " * 10
    lines = [
        json.dumps({"text": long_text, "url": "https://example.org/a"}),
        json.dumps({"text": "too short"}),
        json.dumps({"text": long_text.upper()}),  # same words, other case: a duplicate
        "{not json",
        json.dumps({"title": "no text field"}),
    ]
    (folder / "docs.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "notes.txt").write_text("Too short to keep.")
    return folder


@pytest.fixture(scope="module")
def corpus(raw, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("build") / "shards"
    return out, build([raw], out, vocab_size=600, valid_fraction=0.25, seed=0, max_shard_tokens=4000)


def test_every_document_is_accounted_for(corpus):
    _, manifest = corpus
    stages = manifest["stages"]
    assert stages["read"] == {"in": 19, "out": 17, "dropped": {"bad_json": 1, "no_text_field": 1}}
    assert stages["filter"]["dropped"] == {"too_short": 2}
    assert stages["exact_dedup"]["dropped"] == {"duplicate": 2}
    assert stages["near_dedup"]["dropped"] == {} and stages["decontaminate"]["dropped"] == {}
    for name in ("read", "extract", "filter", "exact_dedup", "near_dedup", "decontaminate"):
        s = stages[name]
        assert s["in"] == s["out"] + sum(s["dropped"].values())
    assert stages["read"]["out"] == stages["extract"]["in"]
    assert stages["extract"]["out"] == stages["filter"]["in"]
    assert stages["filter"]["out"] == stages["exact_dedup"]["in"] == 15
    n_valid = manifest["valid"]["documents"]
    assert stages["split"] == {"in": 13, "train": manifest["documents"], "valid": n_valid}
    assert manifest["documents"] + manifest["valid"]["documents"] == 13
    assert manifest["valid"]["documents"] >= 1


def test_shards_hold_the_documents_tokenized_and_decodable(corpus):
    out, manifest = corpus
    assert len(manifest["shards"]) > 1  # capped at 4000 tokens each
    assert read_manifest(out) == manifest
    tok = Tokenizer.load(out / "tokenizer.model")
    assert tok.sha256 == manifest["tokenizer"]["sha256"] and tok.vocab_size == 600
    docs = tokens = 0
    for shard in manifest["shards"]:
        samples = list(read_shard(out / shard["name"]))
        assert len(samples) == shard["documents"]
        assert sum(len(t) for _, t, _ in samples) == shard["tokens"]
        for _, ids, meta in samples:
            assert ids.dtype == np.uint16 and ids[-1] == tok.eos_id and tok.eos_id not in ids[:-1]
            text = tok.decode(ids[:-1])
            assert len(text) >= 200 and meta["source"]
            docs, tokens = docs + 1, tokens + len(ids)
    assert (docs, tokens) == (manifest["documents"], manifest["tokens"])
    valid = read_manifest(out / "valid")
    assert valid["tokenizer"] == manifest["tokenizer"] and valid["tokens"] == manifest["valid"]["tokens"]


def test_same_inputs_give_byte_identical_shards(raw, corpus, tmp_path):
    out, manifest = corpus
    again = build([raw], tmp_path / "again", vocab_size=600, valid_fraction=0.25, seed=0,
                  max_shard_tokens=4000, workers=1)
    assert again["stages"] == manifest["stages"]
    for name in ["tokenizer.model", *(s["name"] for s in manifest["shards"])]:
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes(), name


def test_given_tokenizer_is_used_as_is(raw, corpus, tmp_path):
    out, manifest = corpus
    built = build([raw], tmp_path / "given", tokenizer=out / "tokenizer.model", valid_fraction=0.25)
    assert built["tokenizer"] == manifest["tokenizer"]
    assert built["tokens"] == manifest["tokens"]


def test_cli_refuses_what_it_cannot_do(raw, corpus, tmp_path, capsys):
    out, _ = corpus
    assert main(["--input", str(raw), "--output", str(out), "--train-tokenizer"]) == 2
    assert f"--output {out} is not empty; pass --force" in capsys.readouterr().err
    assert main(["--input", str(tmp_path / "nowhere"), "--output", str(tmp_path / "o"),
                 "--train-tokenizer"]) == 2
    assert "nowhere does not exist" in capsys.readouterr().err
    gz = tmp_path / "bad.html.gz"
    gz.write_bytes(gzip.compress(b"<html>")[:10])
    assert main(["--input", str(gz), "--output", str(tmp_path / "o2"), "--train-tokenizer",
                 "--vocab-size", "300"]) == 2
    assert "no documents left for training" in capsys.readouterr().err


def documents(folder: Path) -> list[tuple[str, list[int]]]:
    """(key, tokens) of every document of a shard folder and its valid/ part, in shard order."""
    found = []
    for part in (folder, folder / "valid"):
        for shard in read_manifest(part)["shards"]:
            found += [(key, tokens.tolist()) for key, tokens, _ in read_shard(part / shard["name"])]
    return found


@pytest.mark.slow
def test_mpi_ranks_write_the_same_corpus(raw, corpus, tmp_path):
    """mpiexec -n 1, 2 and 3 write byte-identical shards, tokenizer and manifests; cut into other
    chunks, the corpus holds the same documents, tokens and split (only shard boundaries move)."""
    args = ["--input", str(raw), "--train-tokenizer", "--vocab-size", "600", "--valid-fraction", "0.25",
            "--max-shard-tokens", "4000", "--chunk-mb", "0.05"]
    for ranks in (1, 2, 3):
        run_mpi(ranks, "pipelines.build", *args, "--output", str(tmp_path / f"n{ranks}"))
    files = sorted(p.relative_to(tmp_path / "n1") for p in (tmp_path / "n1").rglob("*") if p.is_file())
    assert len(files) > 12
    for ranks in (2, 3):
        assert files == sorted(p.relative_to(tmp_path / f"n{ranks}")
                               for p in (tmp_path / f"n{ranks}").rglob("*") if p.is_file())
        for name in files:
            assert (tmp_path / "n1" / name).read_bytes() == (tmp_path / f"n{ranks}" / name).read_bytes(), name
    out, manifest = corpus
    assert read_manifest(tmp_path / "n3")["stages"] == manifest["stages"]
    assert (tmp_path / "n3" / "tokenizer.model").read_bytes() == (out / "tokenizer.model").read_bytes()
    assert documents(tmp_path / "n3") == documents(out)


def test_shards_are_webdataset_shards(corpus):
    """webdataset's own reader reads the shards: a sample a document, its tokens and meta as files."""
    import webdataset as wds

    out, manifest = corpus
    urls = [str(out / s["name"]) for s in manifest["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert len(samples) == manifest["documents"]
    assert [k for k, _, _ in (t for s in manifest["shards"] for t in read_shard(out / s["name"]))] == [
        s["__key__"] for s in samples]
    assert all(np.load(io.BytesIO(s["tokens.npy"])).dtype == np.uint16 and b"source" in s["meta.json"]
               for s in samples)
