"""Stop cleanly when the cluster asks: SIGTERM or SIGUSR1 -> finish the step, checkpoint, exit to requeue.

SLURM sends SIGUSR1 ahead of the time limit (`#SBATCH --signal=B:USR1@...`, forwarded to the ranks by
cluster/gpt2_xl.slurm) and SIGTERM on preemption, `scontrol requeue` or `scancel`, then SIGKILL after
its KillWait. The handler only records the request: the step in flight finishes, because a signal
can reach the ranks at different moments and a checkpoint is collective. After each step the ranks
agree through an all-reduce, so all of them stop after the same step, save it, and exit with
REQUEUE_EXIT_CODE, on which the SLURM script requeues the job; the requeued job resumes from that
checkpoint (train.resume=auto).
"""

from __future__ import annotations

import logging
import os
import signal

import torch
import torch.distributed as dist

log = logging.getLogger("megagpt.training.preemption")

# EX_TEMPFAIL ("temporary failure, try again later"): distinct from errors (1) and config errors (2).
REQUEUE_EXIT_CODE = os.EX_TEMPFAIL
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


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
        if self.received is None:
            self.received = signal.Signals(signum).name
            # Not the logging module: a handler may interrupt it while it holds its lock.
            os.write(2, f"megagpt: {self.received} received: stopping after this step\n".encode())

    def agreed(self, device: torch.device) -> bool:
        """True on every rank as soon as any rank has received a stop signal (a collective)."""
        flag = torch.tensor(int(self.received is not None), device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
