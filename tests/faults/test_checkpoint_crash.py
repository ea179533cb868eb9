"""A crash in the middle of writing a checkpoint never leaves `latest` naming a partial one."""

from __future__ import annotations

import os
import signal

import pytest

from megagpt import checkpoint
from tests.faults.conftest import logged_steps, start_training, wait_until
from tests.train.conftest import run_training

pytestmark = pytest.mark.slow


def saving_over_a_published_one(ckpt_dir) -> bool:
    return (ckpt_dir / "latest").is_file() and any(ckpt_dir.glob("step*.tmp"))


def test_kill_during_save_then_resume(corpus, tmp_path, reap):
    run, steps = tmp_path / "run", ("train.max_steps=12", "checkpoint.interval=1", "checkpoint.keep_last=2")
    ckpt = run / "checkpoints"
    launcher = start_training(run, corpus, *steps)
    reap(launcher)
    # Every step saves: wait for a save in progress while an earlier one is published, then the
    # whole job dies at once, as when its node fails (SIGKILL: no handler, no clean-up).
    wait_until(lambda: saving_over_a_published_one(ckpt) or launcher.poll() is not None, 240,
               "a checkpoint being written", poll=0.002)
    os.killpg(launcher.pid, signal.SIGKILL)
    launcher.wait()
    partial = sorted(ckpt.glob("step*.tmp"))
    assert partial, "the kill came after the save finished; the test did not hit the window"

    survivor = checkpoint.latest(ckpt)
    assert survivor is not None and survivor.name < partial[-1].name
    killed_steps = {m["step"]: m["loss"] for m in logged_steps(run)}
    resumed_at = int(survivor.name.removeprefix("step"))

    proc = run_training(run, corpus, *steps, "eval.interval=0", "sample.max_new_tokens=0")
    assert f"resumed from {survivor}" in proc.stdout + proc.stderr
    assert not list(ckpt.glob("step*.tmp")), "the partial folder is cleaned up by the next save"
    # keep_last=2, and the checkpoint this run resumed from stays as long as the run lasts.
    assert [p.name for p in checkpoint.published(ckpt)] == sorted({survivor.name, "step00000011",
                                                                   "step00000012"})
    # The step after the survivor was logged before the crash: the resumed run repeats it exactly.
    resumed_steps = [m for m in logged_steps(run) if m["step"] == resumed_at + 1]
    assert resumed_steps[-1]["loss"] == pytest.approx(killed_steps[resumed_at + 1], abs=1e-6)
