"""A corpus build killed at any point continues with the same command to the same output, and a
failed build never destroys the corpus it was asked to replace."""

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from megagpt.formats.shards import read_manifest
from pipelines.build import build, main
from tests.corpus.conftest import ROOT, write_jsonl

PAGES = ROOT / "data/sample/html"
ARGS = ["--train-tokenizer", "--vocab-size", "800", "--valid-fraction", "0.1", "--chunk-mb", "0.1",
        "--workers", "1"]


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("straight") / "shards"
    build([PAGES], out, vocab_size=800, valid_fraction=0.1, chunk_mb=0.1, workers=1)
    return files_of(out)


def start(command: list[str], env: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"], **(env or {})}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def wait_for_units(work: Path, stage: str, count: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300
    while len(list((work / stage).glob("*.done.json"))) < count:
        assert process.poll() is None, f"the build ended before {count} {stage} units were done"
        assert time.monotonic() < deadline, f"no {count} {stage} units after 300 s"
        time.sleep(0.01)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["map", "shards"])
def test_killed_build_continues_to_the_same_output(uninterrupted, tmp_path, stage):
    out = tmp_path / "shards"
    command = [sys.executable, "-m", "pipelines.build", "--input", str(PAGES), "--output", str(out), *ARGS]
    process = start(command)
    wait_for_units(Path(f"{out}.build") / "work", stage, 3, process)
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not out.exists() and (Path(f"{out}.build") / "work" / "plan.json").is_file()

    again = start(command)
    log = again.communicate(timeout=600)[0]
    assert again.returncode == 0, log[-3000:]
    assert f"continuing the build in {out}.build" in log
    assert files_of(out) == uninterrupted
    assert not Path(f"{out}.build").exists()  # the work area goes once the corpus is published


@pytest.mark.slow
def test_a_killed_mpi_rank_ends_the_job_and_the_rerun_finishes_it(uninterrupted, tmp_path):
    out = tmp_path / "shards"
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    command = [mpiexec, "-n", "2", sys.executable, "-m", "pipelines.build", "--input", str(PAGES),
               "--output", str(out), *ARGS]
    process = start(command)
    wait_for_units(Path(f"{out}.build") / "work", "map", 3, process)
    ranks = [p for p in psutil.Process(process.pid).children(recursive=True) if "pipelines.build" in
             " ".join(p.cmdline())]
    assert len(ranks) == 2
    ranks[1].kill()
    process.communicate(timeout=120)
    assert process.returncode != 0  # the launcher ends the job when a rank dies
    again = start(command)
    log = again.communicate(timeout=600)[0]
    assert again.returncode == 0, log[-3000:]
    assert files_of(out) == uninterrupted


def test_failed_force_build_keeps_the_old_corpus(articles, tmp_path, capsys):
    docs = write_jsonl(tmp_path / "docs.jsonl", articles[:20])
    out = tmp_path / "shards"
    first = build([docs], out, vocab_size=500, valid_fraction=0.0)
    before = files_of(out)
    short = write_jsonl(tmp_path / "short.jsonl", ["too short"] * 5)
    assert main(["--input", str(short), "--output", str(out), "--train-tokenizer", "--force"]) == 2
    assert "no documents left for training" in capsys.readouterr().err
    assert files_of(out) == before  # the failed build replaced nothing

    # a tokenizer inside the folder being replaced is read before the old folder goes; the work
    # area the failed build left is redone from the changed inputs on
    assert main(["--input", str(docs), "--output", str(out), "--tokenizer", str(out / "tokenizer.model"),
                 "--valid-fraction", "0.2", "--force"]) == 0
    replaced = read_manifest(out)
    assert replaced["tokenizer"] == first["tokenizer"] and "valid" in replaced and "valid" not in first


def test_output_that_would_destroy_an_input_is_refused(articles, tmp_path, capsys):
    folder = tmp_path / "raw"
    folder.mkdir()
    docs = write_jsonl(folder / "docs.jsonl", articles[:5])
    (tmp_path / "a-file").write_text("not a folder")
    for output, message in [(folder, "holds the input"), (tmp_path, "holds the input"),
                            (folder / "shards", "is inside the input folder"),
                            (tmp_path / "a-file" / "shards", "cannot write in")]:
        assert main(["--input", str(folder), "--output", str(output), "--train-tokenizer", "--force"]) == 2
        assert message in capsys.readouterr().err, output
    assert docs.is_file()


def test_bad_tokenizer_options_name_the_option(articles, tmp_path, capsys, caplog):
    docs = write_jsonl(tmp_path / "docs.jsonl", articles[:5])
    readme = str(ROOT / "README.md")
    assert main(["--input", str(docs), "--output", str(tmp_path / "a"), "--tokenizer", readme]) == 2
    assert f"--tokenizer {ROOT / 'README.md'}" in capsys.readouterr().err
    assert main(["--input", str(docs), "--output", str(tmp_path / "b"), "--train-tokenizer",
                 "--vocab-size", "60000"]) == 2
    assert "--vocab-size 60000 cannot be trained on 5 documents" in capsys.readouterr().err

    (tmp_path / "broken.html.gz").write_bytes(gzip.compress(b"<html>")[:10])
    build([docs, tmp_path / "broken.html.gz"], tmp_path / "c", vocab_size=400, valid_fraction=0.0)
    assert f"skipping unreadable input {tmp_path / 'broken.html.gz'}" in caplog.text
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["stages"]["read"]["dropped"] == {
        "unreadable_file": 1}


def test_an_input_rewritten_in_place_with_its_size_and_mtime_is_noticed(articles, tmp_path, caplog):
    """A continued build compares the inputs' content hashes: a file rewritten with the same size
    and mtime (cp -p, rsync -t, a restored backup) is read again, not taken from the work area."""
    docs = write_jsonl(tmp_path / "docs.jsonl", articles[:20])
    out = tmp_path / "shards"
    with pytest.raises(ValueError, match="--vocab-size 60000 cannot be trained"):
        build([docs], out, vocab_size=60000, valid_fraction=0.0)  # fails after map: the work area stays
    stat = docs.stat()
    docs.write_bytes(docs.read_bytes().replace(b" the ", b" THE "))  # same length
    os.utime(docs, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (docs.stat().st_size, docs.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    caplog.set_level("INFO")
    build([docs], out, vocab_size=500, valid_fraction=0.0)
    assert "redoing from its map step (changed: inputs, vocab_size)" in caplog.text
