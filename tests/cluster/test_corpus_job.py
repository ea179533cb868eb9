"""`sbatch cluster/corpus.slurm` builds the bundled corpus exactly as a local run does."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster.conftest import ROOT

pytestmark = pytest.mark.slow


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_corpus_job_equals_a_local_build(slurm, tmp_path):
    args = ["--input", "data/sample/html", "--train-tokenizer", "--vocab-size", "1024"]
    local, job_out = tmp_path / "local", tmp_path / "slurm"
    subprocess.run([sys.executable, "-m", "pipelines.build", *args, "--output", str(local)],
                   cwd=ROOT, check=True, capture_output=True, timeout=300)

    job = slurm.sbatch("--ntasks=2", "--cpus-per-task=1", f"--output={tmp_path}/corpus-%j.out",
                       "cluster/corpus.slurm",
                       *args, "--output", str(job_out))
    info = slurm.wait(job, ("COMPLETED", "FAILED", "CANCELLED"), timeout=300)
    log = next(tmp_path.glob("corpus-*.out")).read_text()
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log
    assert "on 2 MPI ranks" in log and "corpus built" in log
    # Same manifest (per-stage counts, tokenizer hash, shard list) and byte-identical shards.
    assert (job_out / "manifest.json").read_text() == (local / "manifest.json").read_text()
    assert digests(job_out) == digests(local)


def test_corpus_job_without_arguments_says_what_to_give(slurm, tmp_path):
    job = slurm.sbatch("--ntasks=1", "--cpus-per-task=1", f"--output={tmp_path}/corpus-%j.out",
                       "cluster/corpus.slurm")
    info = slurm.wait(job, ("COMPLETED", "FAILED", "CANCELLED"), timeout=120)
    assert info["JobState"] == "FAILED"
    assert "give pipelines.build's arguments" in next(tmp_path.glob("corpus-*.out")).read_text()
