"""A real two-node SLURM cluster on one host (munged, slurmctld, two slurmd), started for the session.

Debian's packages are installed when missing (as root, with apt-get). The daemons run without
systemd, from a slurm.conf whose ports, state, spool, logs and munge socket all live in a temp
dir, and are stopped by their PIDs at the end. The nodes n1 and n2 are two `slurmd -N` on this
host, each with its own port, spool, pid and log file (the `%n` in their paths); their names
resolve to 127.0.0.1 through lines this fixture adds to /etc/hosts and removes at the end.
Tasks are bound to CPUs (task/affinity), as on real sites. Where packages cannot be installed
(not root, no apt) the tests skip with that reason, except in CI (CI=true), where they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"SLURM is required in CI: {reason}")
    pytest.skip(reason)


def ensure_installed() -> None:
    if all(shutil.which(b, path=f"{os.environ['PATH']}:/usr/sbin:/sbin") for b in BINARIES):
        return
    if os.geteuid() != 0:
        unavailable(f"SLURM is not installed and installing {' '.join(PACKAGES)} needs root")
    if shutil.which("apt-get") is None:
        unavailable(f"SLURM is not installed and there is no apt-get to install {' '.join(PACKAGES)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            unavailable(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


SLURM_CONF = """\
ClusterName=megagpt-test
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SrunPortRange={srun_ports}
AuthType=auth/munge
CredType=cred/munge
# cred_expire: how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket={dir}/munge/munge.socket,cred_expire=10
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
# Tasks bound to their CPUs, as on real sites (srun's -c decides how many each gets).
TaskPlugin=task/affinity
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# Schedule every 2 s rather than every 30-60: a requeued job starts as soon as its hold ends.
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
# TERM, then KILL this long after (also srun --kill-on-bad-exit's): short, so that a lingering rank
# outlasts it within a test (sites: 30 s and more).
KillWait={kill_wait}
SlurmctldPidFile={dir}/slurmctld.pid
SlurmctldLogFile={dir}/slurmctld.log
StateSaveLocation={dir}/state
# One slurmd per node on this host: %n is the node's name.
SlurmdPidFile={dir}/slurmd-%n.pid
SlurmdLogFile={dir}/slurmd-%n.log
SlurmdSpoolDir={dir}/spool-%n
NodeName=n1 NodeAddr=127.0.0.1 Port={n1_port} CPUs={cpus} State=UNKNOWN
NodeName=n2 NodeAddr=127.0.0.1 Port={n2_port} CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
"""
NODES = ("n1", "n2")
KILL_WAIT = 10
HOSTS = Path("/etc/hosts")
HOSTS_MARK = "# megagpt tests/cluster: two SLURM nodes on this host"


@dataclass
class Slurm:
    """The running cluster: its directory and the environment its commands need (SLURM_CONF)."""

    dir: Path
    env: dict[str, str]

    def command(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(args, env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def sbatch(self, *args: str, env: dict[str, str] | None = None) -> int:
        proc = subprocess.run(["sbatch", "--parsable", *args], env={**self.env, **(env or {})}, cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"sbatch {' '.join(args)}: {proc.stderr}"
        return int(proc.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """`scontrol show job` as key=value pairs (JobState, ExitCode, Restarts, ...)."""
        text = self.command("scontrol", "--oneliner", "show", "job", str(job_id)).stdout
        return dict(re.findall(r"(\w+)=(\S*)", text))

    def wait(self, job_id: int, states: tuple[str, ...], timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            info = self.job(job_id)
            if info.get("JobState") in states:
                return info
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} not in {states} within {timeout} s: {info}")
            time.sleep(0.5)


def add_hosts() -> bool:
    """Make the node names resolve to 127.0.0.1; True when this call added the line (to remove it)."""
    text = HOSTS.read_text()
    if HOSTS_MARK in text:
        return False
    line = f"127.0.0.1 {' '.join(NODES)} {HOSTS_MARK}\n"
    HOSTS.write_text(text + ("" if text.endswith("\n") else "\n") + line)
    return True


def remove_hosts() -> None:
    lines = HOSTS.read_text().splitlines(keepends=True)
    HOSTS.write_text("".join(line for line in lines if HOSTS_MARK not in line))


def start_daemons(dir: Path, env: dict[str, str]) -> list[Path]:
    """Start munged, slurmctld and a slurmd per node; return their PID files in start order."""
    munge = dir / "munge"
    munge.mkdir()
    munge.chmod(0o755)  # munged refuses a socket dir others cannot reach, whatever the umask
    # Our own key: the packaged one belongs to the munge user and munged run as root refuses it.
    subprocess.run(["mungekey", "--create", f"--keyfile={munge}/munge.key"], check=True, env=env)
    subprocess.run(["munged", f"--socket={munge}/munge.socket", f"--key-file={munge}/munge.key",
                    f"--pid-file={munge}/munged.pid", f"--log-file={munge}/munged.log",
                    f"--seed-file={munge}/munged.seed"], check=True, env=env)
    subprocess.run(["slurmctld", "-f", env["SLURM_CONF"]], check=True, env=env)
    for node in NODES:
        (dir / f"spool-{node}").mkdir()
        subprocess.run(["slurmd", "-f", env["SLURM_CONF"], "-N", node], check=True, env=env)
    return [munge / "munged.pid", dir / "slurmctld.pid", *(dir / f"slurmd-{n}.pid" for n in NODES)]


def stop_daemons(pid_files: list[Path]) -> None:
    for pid_file in reversed(pid_files):
        if pid_file.is_file():
            pid = int(pid_file.read_text().split()[0])
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(100):  # they clean up and exit within a second or two
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)


def start_cluster(dir: Path) -> tuple[Slurm, list[Path]]:
    """Write slurm.conf in `dir`, start the daemons, wait until both nodes are idle."""
    (dir / "state").mkdir()
    low = free_port()
    conf = dir / "slurm.conf"
    conf.write_text(SLURM_CONF.format(
        dir=dir, ctld_port=free_port(), n1_port=free_port(), n2_port=free_port(),
        srun_ports=f"{low}-{low + 40}", cpus=max(2, os.cpu_count() or 2), kill_wait=KILL_WAIT,
    ))
    path = f"{Path(os.sys.executable).parent}:{os.environ['PATH']}:/usr/sbin:/sbin"
    # sbatch exports this environment to the jobs: their ranks run on DeepSpeed's CPU accelerator on
    # any host, as the jobs' --gpus-per-node=0 says (tests/conftest.py).
    env = dict(os.environ, SLURM_CONF=str(conf), PATH=path, DS_ACCELERATOR="cpu")
    for leftover in ("MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS"):  # the tests set what they mean
        env.pop(leftover, None)
    pid_files = start_daemons(dir, env)
    cluster = Slurm(dir, env)
    deadline = time.monotonic() + 60
    while cluster.command("sinfo", "-h", "-o", "%t", check=False).stdout.split() != ["idle"]:
        if time.monotonic() > deadline:
            logs = "\n".join(p.read_text()[-2000:] for p in sorted(dir.glob("*.log")))
            stop_daemons(pid_files)
            raise RuntimeError(f"the SLURM nodes did not come up within 60 s:\n{logs}")
        time.sleep(0.5)
    return cluster, pid_files


@pytest.fixture(scope="session")
def slurm() -> Iterator[Slurm]:
    ensure_installed()
    # Not under pytest's 0700 tmp dirs: munged wants every folder above its socket open to all.
    dir = Path(tempfile.mkdtemp(prefix="megagpt-slurm-"))
    dir.chmod(0o755)
    added = add_hosts()
    pid_files: list[Path] = []
    try:
        cluster, pid_files = start_cluster(dir)
        yield cluster
    finally:
        stop_daemons(pid_files)
        if added:
            remove_hosts()
        shutil.rmtree(dir, ignore_errors=True)


# cluster/gpt2_xl.slurm cut down to this machine: 2 CPU ranks, no GPUs, a tiny model; on one node,
# or one rank on each of the two.
TINY_NODE = ("--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", "--time=15")
TWO_NODES = ("--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1", "--time=15")
HOOKS = Path(__file__).resolve().parent / "hooks"  # sitecustomize.py: per-rank records, a lingering rank


def tiny_overrides(corpus: Path, max_steps: int) -> list[str]:
    """key=value arguments that turn configs/gpt2-xl.yaml into a model of seconds on `corpus`."""
    return [
        "model.preset=gpt2-tiny", "model.block_size=32", f"data.path={corpus}",
        f"data.valid_path={corpus}/valid", f"train.max_steps={max_steps}", "train.warmup_steps=2",
        "train.lr=3e-3", "train.micro_batch_size=4", "train.grad_accum=1", "log.interval=1",
        "eval.batches=2", "sample.max_new_tokens=8",
    ]


def submit_gpt2_xl(slurm: Slurm, corpus: Path, run_dir: Path, max_steps: int, *overrides: str,
                   layout: tuple[str, ...] = TINY_NODE, env: dict[str, str] | None = None) -> int:
    """sbatch cluster/gpt2_xl.slurm as a user would, with the run dir and port in the environment.

    Each rank records its node, CPUs and threads in <run dir>/ranks/ at exit (tests/cluster/hooks)."""
    (run_dir / "ranks").mkdir(parents=True, exist_ok=True)
    return slurm.sbatch(*layout, f"--output={run_dir}/slurm-%j.out", "cluster/gpt2_xl.slurm",
                        *tiny_overrides(corpus, max_steps), *overrides,
                        env={"MEGAGPT_RUN_DIR": str(run_dir), "MASTER_PORT": str(free_port()),
                             "PYTHONPATH": str(HOOKS), "MEGAGPT_TEST_RECORD": str(run_dir / "ranks"),
                             **(env or {})})
