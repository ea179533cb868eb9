"""`sbatch cluster/corpus.slurm` builds the bundled corpus exactly as a local run does, across two nodes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster.conftest import HOOKS, ROOT

pytestmark = pytest.mark.slow


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_corpus_job_on_two_nodes_equals_a_local_build(slurm, tmp_path):
    args = ["--input", "data/sample/html", "--train-tokenizer", "--vocab-size", "1024"]
    local, job_out = tmp_path / "local", tmp_path / "slurm"
    subprocess.run([sys.executable, "-m", "pipelines.build", *args, "--output", str(local)],
                   cwd=ROOT, check=True, capture_output=True, timeout=300)

    # SRUN_CPUS_PER_TASK as sbatch sets it since Slurm 23.11: MPICH's proxy step (one a node, for
    # both ranks there) must not be held to it. Each rank records its node and CPUs (tests/cluster/hooks).
    ranks = tmp_path / "ranks"
    ranks.mkdir()
    env = {"SRUN_CPUS_PER_TASK": "1", "PYTHONPATH": str(HOOKS), "MEGAGPT_TEST_RECORD": str(ranks)}
    job = slurm.sbatch("--nodes=2", "--ntasks-per-node=2", "--cpus-per-task=1",
                       f"--output={tmp_path}/corpus-%j.out", "cluster/corpus.slurm", *args,
                       "--output", str(job_out), env=env)
    info = slurm.wait(job, ("COMPLETED", "FAILED", "CANCELLED"), timeout=300)
    log = next(tmp_path.glob("corpus-*.out")).read_text()
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log
    assert "on 4 MPI ranks (2 on each of 2 node(s) [n[1-2]])" in log and "corpus built" in log
    recorded = [json.loads(p.read_text()) for p in sorted(ranks.glob("*.json"))]
    print(f"ranks: {recorded}")
    # Even placement, and both ranks of a node share its 2 CPUs (not 1, the cpus-per-task of one task).
    assert [(r["rank"], r["node"], r["affinity"]) for r in recorded] == [
        (0, "n1", [0, 1]), (1, "n1", [0, 1]), (2, "n2", [0, 1]), (3, "n2", [0, 1])]
    # Same manifest (per-stage counts, tokenizer hash, shard list) and byte-identical shards.
    assert (job_out / "manifest.json").read_text() == (local / "manifest.json").read_text()
    assert digests(job_out) == digests(local)


def test_corpus_job_without_arguments_says_what_to_give(slurm, tmp_path):
    job = slurm.sbatch("--ntasks-per-node=1", "--cpus-per-task=1", f"--output={tmp_path}/corpus-%j.out",
                       "cluster/corpus.slurm")
    info = slurm.wait(job, ("COMPLETED", "FAILED", "CANCELLED"), timeout=120)
    assert info["JobState"] == "FAILED"
    assert "give pipelines.build's arguments" in next(tmp_path.glob("corpus-*.out")).read_text()
