"""Stopping the launcher stops the ranks as SIGTERM does: SIGINT counts as SIGTERM, and a rank whose
launcher exited without telling it (the `deepspeed` command dies of SIGTERM, leaving its child and
the ranks running) stops by itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest

from megagpt import checkpoint
from megagpt.training import preemption
from tests.faults.conftest import logged_steps, rank_pid, start_training, wait_until
from tests.train.conftest import ROOT


@pytest.fixture
def stop_request():
    before = {sig: signal.getsignal(sig) for sig in preemption.STOP_SIGNALS}
    yield preemption.StopRequest()
    for sig, handler in before.items():
        signal.signal(sig, handler)


def test_sigint_stops_like_sigterm_and_a_second_one_interrupts(stop_request):
    os.kill(os.getpid(), signal.SIGINT)
    assert stop_request.received == "SIGINT"
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)


def test_a_rank_stops_when_its_launcher_is_gone(tmp_path):
    """A fake `torchrun` (a script of that name) starts a child that watches it; the launcher is
    killed with SIGKILL, which it cannot pass on: the child records the stop by itself."""
    rank = textwrap.dedent("""
        import sys, time
        from megagpt.training import preemption
        stop = preemption.StopRequest()
        print([p.pid for p in preemption.launcher_processes()], flush=True)
        preemption.watch_launcher(stop, poll_s=0.05)
        deadline = time.monotonic() + 30
        while stop.received is None and time.monotonic() < deadline:
            time.sleep(0.05)
        print(stop.received, flush=True)
    """)
    (tmp_path / "rank.py").write_text(rank)
    launcher = tmp_path / "torchrun"
    child = f"subprocess.Popen([sys.executable, {str(tmp_path / 'rank.py')!r}])"
    launcher.write_text(f"#!{sys.executable}\nimport subprocess, sys, time\n{child}\ntime.sleep(60)\n")
    launcher.chmod(0o755)
    out = tmp_path / "rank.out"
    with out.open("w") as f:
        proc = subprocess.Popen([str(launcher)], cwd=ROOT, stdout=f,
                                env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        wait_until(lambda: out.read_text().startswith("["), 60, "the rank reports its launchers")
        assert out.read_text().splitlines()[0] == f"[{proc.pid}]"
        proc.kill()  # not reaped yet: a zombie counts as gone
        wait_until(lambda: len(out.read_text().splitlines()) == 2, 30, "the rank notices")
        assert out.read_text().splitlines()[1] == f"the launcher python torchrun (pid {proc.pid}) exiting"
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_sigterm_to_the_deepspeed_command_checkpoints_and_leaves_no_rank(corpus, tmp_path, reap):
    run = tmp_path / "run"
    launcher = start_training(run, corpus, "train.max_steps=400")
    reap(launcher)
    wait_until(lambda: len(logged_steps(run)) >= 3 or launcher.poll() is not None, 240, "step 3")
    ranks = [psutil.Process(rank_pid(launcher, r)) for r in (0, 1)]
    orphans = [p for p in psutil.Process(launcher.pid).children(recursive=True) if p not in ranks]
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(timeout=30) == -signal.SIGTERM  # the command itself dies at once
    gone, alive = psutil.wait_procs(ranks + orphans, timeout=120)
    assert not alive, f"still running after the launcher was stopped: {alive}"
    log = (run / "launcher.log").read_text()  # the ranks' exit codes are not ours to read: their log
    gone = f"the launcher python deepspeed (pid {launcher.pid})"
    assert f"megagpt: {gone} is gone: stopping after this step" in log
    stopped_at = logged_steps(run)[-1]["step"]
    assert f"after step {stopped_at}; exiting with {preemption.REQUEUE_EXIT_CODE} to be requeued" in log
    assert 3 <= stopped_at < 400
    assert checkpoint.latest(run / "checkpoints").name == checkpoint.tag_for(stopped_at)
