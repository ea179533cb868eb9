"""`sbatch cluster/gpt2_xl.slurm` on a real two-node SLURM: a run to the end, one world over two nodes,
requeues mid-run (with a rank lingering past KillWait), TERM to the whole job, a lost rank."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from megagpt import checkpoint
from tests.cluster.conftest import KILL_WAIT, TWO_NODES, Slurm, submit_gpt2_xl

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


def ranks(run: Path) -> list[dict]:
    """What each rank recorded at exit (tests/cluster/hooks/sitecustomize.py), by rank and restart."""
    return [json.loads(p.read_text()) for p in sorted((run / "ranks").glob("*.json"))]


def wait_for_restart(slurm: Slurm, job: int, run: Path, restart: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while f"(restart {restart})" not in output(run):  # the requeued job has started
        assert time.monotonic() < deadline, f"job {job} not restarted within {timeout} s:\n{output(run)}"
        time.sleep(0.2)


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
    assert re.search(r"2 tasks on 1 node\(s\) \[n[12]\]", log)
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


def test_two_nodes_form_one_world_whatever_master_addr_the_shell_has(slurm, corpus, tmp_path):  # noqa: F811
    """One rank on each node, 2 CPUs each; the submitting shell has an unroutable MASTER_ADDR."""
    run = tmp_path / "two-nodes"
    job = submit_gpt2_xl(slurm, corpus, run, 20, layout=(*TWO_NODES[:3], "--cpus-per-task=2", "--time=15"),
                         env={"MASTER_ADDR": "192.0.2.1"})  # TEST-NET-1: nothing answers there
    info = slurm.wait(job, DONE, timeout=300)
    log = output(run)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log
    assert "ignoring MASTER_ADDR=192.0.2.1 from the submitting shell: the rendezvous is on n1" in log
    assert "2 tasks on 2 node(s) [n[1-2]], rendezvous n1 (127.0.0.1)" in log
    assert "world 2 | dp 2" in log and "training finished" in log
    assert sorted(losses(run)) == list(range(1, 21))
    recorded = ranks(run)
    print(f"ranks: {recorded}")
    assert [(r["rank"], r["node"], r["master_addr"]) for r in recorded] == [(0, "n1", "127.0.0.1"),
                                                                          (1, "n2", "127.0.0.1")]
    # srun got -c 2 (22.05 does not inherit sbatch's): each rank holds 2 CPUs and runs 2 threads.
    for r in recorded:
        assert (len(r["affinity"]), r["omp_num_threads"], r["torch_threads"]) == (2, "2", 2), r


def test_cpu_affinity_of_each_rank_is_its_cpus_per_task(straight):
    """Two ranks on one node with --cpus-per-task=1 under task/affinity: one CPU each, not shared."""
    recorded = ranks(straight)
    assert len(recorded) == 2 and len({r["node"] for r in recorded}) == 1, recorded
    assert [len(r["affinity"]) for r in recorded] == [1, 1], recorded
    assert set(recorded[0]["affinity"]).isdisjoint(recorded[1]["affinity"]), recorded
    assert [(r["omp_num_threads"], r["torch_threads"]) for r in recorded] == [("1", 1), ("1", 1)]


def test_requeued_twice_mid_run_ends_with_the_uninterrupted_losses(slurm, corpus, straight, tmp_path):  # noqa: F811
    """Two nodes, one rank each. The second stop leaves rank 1 (on n2) lingering past KillWait at exit:
    srun's status is then 137, yet the job requeues, from what rank 0 published."""
    run = tmp_path / "requeued"
    job = submit_gpt2_xl(slurm, corpus, run, STEPS, "checkpoint.interval=40", "checkpoint.keep_last=2",
                         "eval.interval=60", layout=TWO_NODES,
                         env={"MEGAGPT_TEST_LINGER": f"1:1:{3 * KILL_WAIT}"})
    # 1. An operator's (or preemption's) requeue: SLURM sends TERM to every process of the job.
    wait_for_step(slurm, job, run, 10)
    slurm.command("scontrol", "requeue", str(job))
    # 2. In the requeued job, the time-limit warning: USR1 to the batch shell, as --signal=B:USR1@...
    #    sends it; the script passes it to the ranks and requeues the job itself.
    wait_for_restart(slurm, job, run, 1)
    first_stop = int(checkpoint.latest(run / "checkpoints").name.removeprefix("step"))
    wait_for_step(slurm, job, run, first_stop + 10)
    slurm.command("scancel", "--batch", "--signal=USR1", str(job))

    info = slurm.wait(job, DONE, timeout=400)
    log = output(run)
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "2"), log
    assert "(restart 1)" in log and "(restart 2)" in log
    assert "stopped by SIGTERM after step" in log
    assert "test hook: rank 1 lingering" in log
    assert re.search(r"published exit code 75 \(srun's status: 137\)", log), log
    assert "checkpointed after SIGUSR1; requeueing job" in log
    assert log.count("resumed from") == 2

    expected, got = losses(straight), losses(run)
    assert sorted(got) == sorted(expected)
    worst = max(abs(got[s] - expected[s]) for s in expected)
    print(f"requeued twice on two nodes; max |loss - uninterrupted loss (one node)| over {len(expected)} "
          f"steps: {worst:.2e}; final loss {got[STEPS]:.6f} vs {expected[STEPS]:.6f}")
    assert worst < 1e-5
    evals = [{m["step"]: m["eval_loss"] for m in metrics(r) if "eval_loss" in m} for r in (run, straight)]
    assert evals[0][STEPS] == pytest.approx(evals[1][STEPS], abs=1e-5)


def test_term_to_the_whole_job_checkpoints_and_requeues(slurm, corpus, tmp_path):  # noqa: F811
    """scancel --full --signal=TERM: TERM to the batch shell and its children only. The shell has
    slurmstepd pass it to the ranks (srun never sees it); they save and exit 75, and the job, still
    RUNNING, is requeued by the script and resumes to the end."""
    run = tmp_path / "term"
    job = submit_gpt2_xl(slurm, corpus, run, 150, "eval.interval=0", layout=TWO_NODES)
    wait_for_step(slurm, job, run, 10)
    slurm.command("scancel", "--full", "--signal=TERM", str(job))
    wait_for_restart(slurm, job, run, 1)
    stopped = checkpoint.latest(run / "checkpoints")
    assert stopped is not None and stopped.name != "step00000150", output(run)
    info = slurm.wait(job, DONE, timeout=300)
    log = output(run)
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "1"), log
    assert "SIGTERM received, passing it to the ranks" in log
    assert "stopped by SIGTERM after step" in log and "forcing job termination" not in log
    assert "checkpointed after SIGTERM; requeueing job" in log
    assert f"resumed from {stopped}" in log
    assert sorted(losses(run)) == list(range(1, 151))


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


def test_a_killed_rank_on_n2_ends_the_job_within_60_s_naming_it(slurm, corpus, tmp_path):  # noqa: F811
    run = tmp_path / "lost-rank"
    job = submit_gpt2_xl(slurm, corpus, run, 100_000, "eval.interval=0", layout=TWO_NODES)
    wait_for_step(slurm, job, run, 5)
    os.kill(rank_pid(job, 1), signal.SIGKILL)  # rank 1 runs on n2
    killed = time.monotonic()
    info = slurm.wait(job, DONE, timeout=90)
    elapsed = time.monotonic() - killed
    log = output(run)
    print(f"rank 1 on n2 killed: job {info['JobState']} after {elapsed:.1f} s")
    assert info["JobState"] == "FAILED" and info["ExitCode"] != "0:0", log
    assert elapsed < 60
    assert "n2: task 1: Killed" in log
    assert "training failed with exit status" in log
    assert "requeueing" not in log  # no checkpoint was written in this run: nothing to resume


def test_a_failure_after_a_checkpoint_is_requeued_a_bounded_number_of_times(slurm, corpus, tmp_path):  # noqa: F811
    """A rank lost after `latest` advanced: requeued automatically (here at most once), then failed."""
    run = tmp_path / "auto-requeue"
    job = submit_gpt2_xl(slurm, corpus, run, 100_000, "eval.interval=0", "checkpoint.interval=5",
                         layout=TWO_NODES, env={"MEGAGPT_MAX_AUTO_REQUEUES": "1"})
    for restart in (0, 1):
        if restart:
            wait_for_restart(slurm, job, run, 1)
        ckpt = run / "checkpoints"
        start = checkpoint.latest(ckpt)
        deadline = time.monotonic() + 240
        while checkpoint.latest(ckpt) == start:  # latest advanced in this run
            assert time.monotonic() < deadline, output(run)
            time.sleep(0.2)
        os.kill(rank_pid(job, 1), signal.SIGKILL)
    info = slurm.wait(job, DONE, timeout=120)
    log = output(run)
    assert (info["JobState"], info["Restarts"]) == ("FAILED", "1"), log
    assert "requeueing job" in log and "(automatic requeue 1 of 1)" in log
    assert log.count("training failed with exit status") == 2


def test_the_same_job_on_one_rank_with_offload_uses_node_local_scratch(slurm, corpus, tmp_path):  # noqa: F811
    """Fewer devices, the same script: one task, optimizer state and weights offloaded to NVMe, the
    offload folder defaulting to the job's node-local scratch ($TMPDIR here; $SLURM_TMPDIR where a
    site sets it)."""
    run, scratch = tmp_path / "run", tmp_path / "scratch"
    scratch.mkdir()
    job = submit_gpt2_xl(slurm, corpus, run, 6, "model.n_embd=512", "model.n_head=8", "checkpoint.interval=3",
                         "parallel.offload_optimizer=nvme", "parallel.offload_params=nvme",
                         layout=("--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=2",
                                 "--time=15"), env={"TMPDIR": str(scratch)})
    info = slurm.wait(job, DONE, timeout=300)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), output(run)
    assert sorted(losses(run)) == [1, 2, 3, 4, 5, 6]
    assert "| offload: optimizer to nvme, params to nvme;" in output(run)
    swapped = list((scratch / "megagpt-offload").rglob("*.swp"))
    assert swapped, f"nothing offloaded under {scratch}"
    assert (run / "checkpoints" / "latest").read_text() == "step00000006"
