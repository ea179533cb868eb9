"""Stop cleanly when the cluster asks: SIGTERM or SIGUSR1 -> finish the step, checkpoint, exit to requeue.

SLURM sends SIGUSR1 ahead of the time limit (`#SBATCH --signal=B:USR1@...`, forwarded to the ranks by
cluster/gpt2_xl.slurm) and SIGTERM on preemption, `scontrol requeue` or `scancel`, then SIGKILL after
its KillWait. The handler only records the request: the step in flight finishes, because a signal
can reach the ranks at different moments and a checkpoint is collective. After each step the ranks
agree through an all-reduce, so all of them stop after the same step, save it, and exit with
REQUEUE_EXIT_CODE, on which the SLURM script requeues the job; the requeued job resumes from that
checkpoint (train.resume=auto).

A user stopping the launcher gets the same. SIGINT (Ctrl-C) counts as SIGTERM: torchrun and
MPICH's mpiexec forward SIGTERM and SIGINT to the ranks (they were seen to), and Ctrl-C in a
terminal reaches every process of the foreground group; a second SIGINT interrupts at once. The
`deepspeed` command installs no handler on one node: SIGTERM ends it at once, while its child
(deepspeed.launcher.launch) and the ranks run on, orphaned. So each rank watches its launcher
processes (`watch_launcher`): when one of them is gone, the rank stops as if it had received
SIGTERM. prctl's PR_SET_PDEATHSIG cannot do this: the rank's parent, deepspeed.launcher.launch,
outlives the command.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import torch
import torch.distributed as dist

log = logging.getLogger("megagpt.training.preemption")

# EX_TEMPFAIL ("temporary failure, try again later"): distinct from errors (1) and config errors (2).
REQUEUE_EXIT_CODE = os.EX_TEMPFAIL
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
# What the launchers' processes are called (argv[0], the script, or the `-m` module).
LAUNCHER_NAMES = frozenset({"deepspeed", "deepspeed.launcher.launch", "deepspeed.launcher.runner", "torchrun",
                            "torch.distributed.run", "mpiexec", "mpirun", "mpiexec.hydra", "hydra_pmi_proxy",
                            "orterun", "prterun", "srun", "slurmstepd"})


class StopRequest:
    """Records SIGTERM / SIGUSR1 instead of dying; `agreed()` tells all ranks at once to stop."""

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
        self.received: str | None = None
        self.signals = signals
        for sig in signals:
            signal.signal(sig, self._record)

    def ignore_more(self) -> None:
        """Once stopping, further signals change nothing: ignore them, also during interpreter exit.

        When the first rank exits with REQUEUE_EXIT_CODE, srun (--kill-on-bad-exit) sends TERM to the
        others, which may still be tearing down; Python resets its own handlers to the default
        (death) at exit, but leaves SIG_IGN alone. So every rank still exits with the requeue code.
        """
        for sig in self.signals:
            signal.signal(sig, signal.SIG_IGN)

    def _record(self, signum: int, frame: object) -> None:
        if signum == signal.SIGINT and self.received == "SIGINT":
            raise KeyboardInterrupt  # Ctrl-C twice: the user does not want to wait for the step
        if self.received is None:
            self.received = signal.Signals(signum).name
            # Not the logging module: a handler may interrupt it while it holds its lock.
            extra = " (Ctrl-C again to interrupt at once)" if signum == signal.SIGINT else ""
            os.write(2, f"megagpt: {self.received} received: stopping after this step{extra}\n".encode())

    def launcher_gone(self, what: str) -> None:
        """Stop as on SIGTERM: the launcher that started this rank exited without passing it on."""
        if self.received is None:
            self.received = f"{what} exiting"
            os.write(2, f"megagpt: {what} is gone: stopping after this step\n".encode())

    def agreed(self, device: torch.device) -> bool:
        """True on every rank as soon as any rank has received a stop signal (a collective)."""
        flag = torch.tensor(int(self.received is not None), device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def launcher_processes(start: psutil.Process | None = None, depth: int = 6) -> list[psutil.Process]:
    """This process's ancestors up to the outermost launcher among the nearest `depth` (none when
    no launcher started it: a plain `python megagpt/train.py` has nothing to watch)."""
    chain: list[psutil.Process] = []
    outermost = 0
    proc = (start or psutil.Process()).parent()
    while proc is not None and len(chain) < depth:
        chain.append(proc)
        if _is_launcher(proc):
            outermost = len(chain)
        proc = proc.parent()
    return chain[:outermost]


def _is_launcher(proc: psutil.Process) -> bool:
    try:
        argv = proc.cmdline()[:4]  # python -u -m deepspeed.launcher.launch
    except psutil.Error:
        return False
    return any(Path(arg).name in LAUNCHER_NAMES for arg in argv)


def watch_launcher(stop: StopRequest, poll_s: float = 1.0) -> threading.Thread | None:
    """A daemon thread that calls stop.launcher_gone once any of this rank's launcher processes has
    exited. None when there is no launcher."""
    # Named now: once a process has exited, its command line can no longer be read.
    watched = [(proc, f"the launcher {' '.join(_argv(proc))} (pid {proc.pid})")
               for proc in launcher_processes()]
    if not watched:
        return None

    def watch() -> None:
        while stop.received is None:
            for proc, name in watched:
                if _exited(proc):
                    stop.launcher_gone(name)
                    return
            time.sleep(poll_s)

    thread = threading.Thread(target=watch, name="launcher-watch", daemon=True)
    thread.start()
    return thread


def _exited(proc: psutil.Process) -> bool:
    """Gone, its pid reused, or a zombie (exited, not yet reaped by its parent)."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def _argv(proc: psutil.Process) -> list[str]:
    try:
        return [Path(arg).name for arg in proc.cmdline()[:2]]
    except psutil.Error:
        return [str(proc.pid)]
