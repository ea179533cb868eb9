"""Training processes started in their own session, so that a test can signal or kill them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.train.conftest import ROOT, training_command


def start_training(run_dir: Path, shards: Path, *overrides: str) -> subprocess.Popen:
    """Two ranks under the deepspeed launcher, in a new session; output in run_dir/launcher.log."""
    cmd, env = training_command(run_dir, shards, "eval.interval=0", "sample.max_new_tokens=0", *overrides)
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "launcher.log").open("w") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def rank_pid(launcher: subprocess.Popen, rank: int) -> int:
    """The process of `rank` among the deepspeed launcher's children (it passes --local_rank=N)."""
    for child in psutil.Process(launcher.pid).children(recursive=True):
        if f"--local_rank={rank}" in child.cmdline():
            return child.pid
    raise LookupError(f"no rank {rank} under launcher {launcher.pid}")


def wait_until(condition: Callable[[], bool], timeout: float, what: str, poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(poll)


def logged_steps(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def reap():
    """Kill whatever a test started and left running (by its session), even when the test fails."""
    started: list[subprocess.Popen] = []
    yield started.append
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
