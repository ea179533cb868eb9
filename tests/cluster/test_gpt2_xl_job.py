"""`sbatch cluster/gpt2_xl.slurm` on a real SLURM: a run to the end, requeues mid-run, a lost rank."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from megagpt import checkpoint
from tests.cluster.conftest import Slurm, submit_gpt2_xl

pytestmark = pytest.mark.slow
STEPS = 120  # long enough (several seconds) for a requeue to land mid-run
DONE = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")


def metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def losses(run: Path) -> dict[int, float]:
    """Train loss per step; a step logged twice (redone after a requeue) counts as its last run."""
    return {m["step"]: m["loss"] for m in metrics(run) if "loss" in m}


def wait_for_step(slurm: Slurm, job: int, run: Path, step: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while max(losses(run), default=0) < step:
        state = slurm.job(job)["JobState"]
        assert state not in DONE, f"job {job} ended ({state}) before step {step}:\n{output(run)}"
        assert time.monotonic() < deadline, f"job {job} not at step {step} within {timeout} s"
        time.sleep(0.05)


def output(run: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(run.glob("slurm-*.out")))


@pytest.fixture(scope="module")
def straight(slurm, corpus, tmp_path_factory) -> Path:  # noqa: F811
    """An uninterrupted job: the reference for the requeued ones."""
    run = tmp_path_factory.mktemp("straight")
    job = submit_gpt2_xl(slurm, corpus, run, STEPS, "checkpoint.interval=40", "checkpoint.keep_last=2",
                         "eval.interval=60")
    info = slurm.wait(job, DONE, timeout=300)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), output(run)
    return run


def test_tiny_run_to_the_end_leaves_checkpoints_metrics_and_events(straight):
    log = output(straight)
    assert "2 tasks on 1 node(s) [localhost]" in log
    assert "world 2 | dp 2 | pp 1 | tp 1 | zero 3" in log
    assert "gpt2_xl.slurm: " in log and "training finished" in log
    assert sorted(losses(straight)) == list(range(1, STEPS + 1))
    assert [m["step"] for m in metrics(straight) if "eval_loss" in m] == [60, 120]

    ckpt = straight / "checkpoints"
    assert checkpoint.latest(ckpt) == ckpt / "step00000120"
    assert [p.name for p in checkpoint.published(ckpt)] == ["step00000080", "step00000120"]  # keep_last=2

    events = EventAccumulator(str(straight))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, STEPS + 1))
    assert [e.step for e in events.Scalars("eval/loss")] == [60, 120]
    assert "samples/text_summary" in events.Tags()["tensors"]


def test_requeued_twice_mid_run_ends_with_the_uninterrupted_losses(slurm, corpus, straight, tmp_path):  # noqa: F811
    run = tmp_path / "requeued"
    job = submit_gpt2_xl(slurm, corpus, run, STEPS, "checkpoint.interval=40", "checkpoint.keep_last=2",
                         "eval.interval=60")
    # 1. An operator's (or preemption's) requeue: SLURM sends TERM to every process of the job.
    wait_for_step(slurm, job, run, 10)
    slurm.command("scontrol", "requeue", str(job))
    # 2. In the requeued job, the time-limit warning: USR1 to the batch shell, as --signal=B:USR1@...
    #    sends it; the script passes it to the ranks and requeues the job itself.
    deadline = time.monotonic() + 120
    while "(restart 1)" not in output(run):  # the requeued job has started: the checkpoint is in
        assert time.monotonic() < deadline, f"job {job} not restarted within 120 s:\n{output(run)}"
        time.sleep(0.2)
    first_stop = int(checkpoint.latest(run / "checkpoints").name.removeprefix("step"))
    wait_for_step(slurm, job, run, first_stop + 10)
    slurm.command("scancel", "--batch", "--signal=USR1", str(job))

    info = slurm.wait(job, DONE, timeout=300)
    log = output(run)
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "2"), log
    assert "(restart 1)" in log and "(restart 2)" in log
    assert "stopped by SIGTERM after step" in log
    assert "checkpointed after SIGUSR1; requeueing job" in log
    assert log.count("resumed from") == 2

    expected, got = losses(straight), losses(run)
    assert sorted(got) == sorted(expected)
    worst = max(abs(got[s] - expected[s]) for s in expected)
    print(f"requeued twice; max |loss - uninterrupted loss| over {len(expected)} steps: {worst:.2e}; "
          f"final loss {got[STEPS]:.6f} vs {expected[STEPS]:.6f}")
    assert worst < 1e-5
    evals = [{m["step"]: m["eval_loss"] for m in metrics(r) if "eval_loss" in m} for r in (run, straight)]
    assert evals[0][STEPS] == pytest.approx(evals[1][STEPS], abs=1e-5)


def rank_pid(job: int, rank: int) -> int:
    """The trainer process of `rank` in `job`, found by the variables srun gave it."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if (f"SLURM_JOB_ID={job}".encode() in environ and f"SLURM_PROCID={rank}".encode() in environ
                and b"megagpt/train.py" in cmdline and b"python" in cmdline.split(b"\0")[0]):
            return int(pid)
    raise LookupError(f"no rank {rank} of job {job}")


def test_a_killed_rank_ends_the_job_within_60_s_naming_it(slurm, corpus, tmp_path):  # noqa: F811
    run = tmp_path / "lost-rank"
    job = submit_gpt2_xl(slurm, corpus, run, 100_000, "eval.interval=0")
    wait_for_step(slurm, job, run, 5)
    os.kill(rank_pid(job, 1), signal.SIGKILL)
    killed = time.monotonic()
    info = slurm.wait(job, DONE, timeout=90)
    elapsed = time.monotonic() - killed
    log = output(run)
    print(f"rank 1 killed: job {info['JobState']} after {elapsed:.1f} s")
    assert info["JobState"] == "FAILED" and info["ExitCode"] != "0:0", log
    assert elapsed < 60
    assert "task 1: Killed" in log
    assert "training failed with exit status" in log
