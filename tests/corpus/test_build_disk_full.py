"""A build whose disk fills up names the folder and how to go on, not a raw OSError."""

from __future__ import annotations

import subprocess

import pytest

from pipelines.build import main
from tests.corpus.conftest import write_jsonl


@pytest.fixture
def small_disk(tmp_path):
    """A real 64 KiB file system (tmpfs; the suite runs as root, as CI does)."""
    folder = tmp_path / "small"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_is_named(articles, tmp_path, small_disk, capsys):
    docs = write_jsonl(tmp_path / "docs.jsonl", articles[:40])
    out = small_disk / "out"
    code = main(["--input", str(docs), "--output", str(out), "--train-tokenizer", "--vocab-size", "300",
                 "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"pipelines.build: error: no space left in {small_disk} (No space left on device" in err, err
    assert f"the work area {out}.build and the output {out} are written there" in err
    assert "the same command continues the build" in err
