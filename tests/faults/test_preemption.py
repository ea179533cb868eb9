"""SIGUSR1 / SIGTERM: finish the step, checkpoint, exit with the requeue code; all ranks together."""

from __future__ import annotations

import os
import signal

import pytest

from megagpt import checkpoint
from megagpt.training.preemption import REQUEUE_EXIT_CODE
from tests.faults.conftest import logged_steps, rank_pid, start_training, wait_until
from tests.train.conftest import run_training

pytestmark = pytest.mark.slow


def test_signal_to_one_rank_stops_all_at_the_same_step_and_resumes(corpus, tmp_path, reap):
    run, steps = tmp_path / "run", ("train.max_steps=400",)
    launcher = start_training(run, corpus, *steps)
    reap(launcher)
    wait_until(lambda: len(logged_steps(run)) >= 3 or launcher.poll() is not None, 240, "step 3")
    # SLURM signals every task, but not at the same instant: only rank 1 hears it here.
    os.kill(rank_pid(launcher, 1), signal.SIGUSR1)
    assert launcher.wait(timeout=120) == REQUEUE_EXIT_CODE
    log = (run / "launcher.log").read_text()
    assert "SIGUSR1 received: stopping after this step" in log

    stopped_at = logged_steps(run)[-1]["step"]
    assert 3 <= stopped_at < 400
    assert checkpoint.latest(run / "checkpoints").name == checkpoint.tag_for(stopped_at)
    assert f"stopped by a signal on another rank after step {stopped_at}; exiting with 75" in log

    # Started again (a shorter schedule to save time): it picks up that checkpoint.
    proc = run_training(run, corpus, f"train.max_steps={stopped_at + 2}", "eval.interval=0",
                        "sample.max_new_tokens=0")
    assert f"resumed from {run / 'checkpoints' / checkpoint.tag_for(stopped_at)}" in proc.stderr
    assert [m["step"] for m in logged_steps(run) if "loss" in m][-2:] == [stopped_at + 1, stopped_at + 2]
