"""A hung rank (stopped, not dead) ends the run once a collective outwaits fault.collective_timeout_s."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.faults.conftest import logged_steps, rank_pid, start_training, wait_until

pytestmark = pytest.mark.slow


# Two data-parallel ranks meet in collectives; two pipeline stages also wait on each other's
# activations and gradients (point-to-point receives), which must time out alike.
@pytest.mark.parametrize("layout", [(), ("parallel.pp=2", "train.grad_accum=2")], ids=["dp2", "pp2"])
def test_a_stopped_rank_ends_the_run_by_collective_timeout(corpus, tmp_path, reap, layout):
    run = tmp_path / "run"
    launcher = start_training(run, corpus, "train.max_steps=100000", "fault.collective_timeout_s=5", *layout)
    reap(launcher)
    wait_until(lambda: len(logged_steps(run)) >= 3 or launcher.poll() is not None, 240, "step 3")
    os.kill(rank_pid(launcher, 1), signal.SIGSTOP)  # alive, sockets open, never answering
    stopped = time.monotonic()
    code = launcher.wait(timeout=120)
    elapsed = time.monotonic() - stopped
    log = (run / "launcher.log").read_text()
    print(f"rank 1 stopped: run ended with {code} after {elapsed:.1f} s")
    assert code != 0
    assert elapsed < 60
    assert "Timed out waiting 5000ms" in log, log[-3000:]  # gloo, on the rank left waiting
