"""What a log line reports is the training it measured: tokens/s without the evaluation and
checkpoints between log lines, a zero gradient norm as zero, peak memory of every rank."""

from __future__ import annotations

import math
import subprocess

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.train.conftest import ROOT, read_metrics, run_training, training_command

pytestmark = pytest.mark.slow


def test_tokens_per_second_leaves_out_evaluation_and_checkpoints(corpus, tmp_path):
    run = tmp_path / "run"
    cmd, env = training_command(run, corpus, "train.max_steps=8", "log.interval=4", "eval.interval=2",
                                "checkpoint.interval=2", "sample.max_new_tokens=0",
                                "train.micro_batch_size=8", launcher="python")
    cmd[cmd.index("megagpt/train.py")] = "tests/train/slow_evaluation_run.py"
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    train = [m for m in read_metrics(run) if "loss" in m]
    tokens_per_step = 8 * 32  # micro-batch x block_size (configs/tiny.yaml), one process
    # Each step took one second of the clock; each of the two evaluations and saves in an interval
    # took 1,000 s, which a rate timed between log lines would have divided by.
    assert [m["tokens_per_sec"] for m in train] == [tokens_per_step, tokens_per_step]
    assert all(math.isfinite(m["grad_norm"]) for m in train)


def test_peak_memory_of_each_rank_is_logged(corpus, tmp_path):
    run = tmp_path / "run"
    proc = run_training(run, corpus, "train.max_steps=4", "log.interval=2", "eval.interval=0",
                        "sample.max_new_tokens=0")
    assert "peak memory" in proc.stdout + proc.stderr
    train = [m for m in read_metrics(run) if "loss" in m]
    # A CPU rank's peak resident memory: a Python process with torch and DeepSpeed is > 100 MiB.
    assert all(0.1 < m["peak_memory_gib"] < 64 for m in train)
    events = EventAccumulator(str(run))
    events.Reload()
    ranks = [t for t in events.Tags()["scalars"] if t.startswith("memory/peak_gib/rank_")]
    assert sorted(ranks) == ["memory/peak_gib/rank_00000", "memory/peak_gib/rank_00001"]

