"""Test hooks for the trainer ranks of SLURM jobs, loaded by Python at start-up (PYTHONPATH=this folder).

MEGAGPT_TEST_RECORD=DIR: at exit, each rank (of megagpt/train.py, or of pipelines.build under MPI)
writes DIR/rank<N>-restart<R>.json with its node, CPU affinity, OMP_NUM_THREADS and torch's thread count.
MEGAGPT_TEST_LINGER=RANK:RESTART:SECONDS: that rank, in that restart of the job, lingers at exit for
SECONDS (ignoring TERM), as a rank slow to tear down does; srun then kills it after KillWait.
Only processes running megagpt/train.py or pipelines.build are touched.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import sys
import time
from pathlib import Path

_env = os.environ
_rank, _restart = _env.get("PMI_RANK", _env.get("SLURM_PROCID")), _env.get("SLURM_RESTART_COUNT", "0")


def _trainer() -> bool:  # sys.argv is complete by exit time
    return bool(sys.argv) and sys.argv[0].endswith(("megagpt/train.py", "pipelines/build.py"))


def _record() -> None:
    if not _trainer():
        return
    torch = sys.modules.get("torch")
    Path(_env["MEGAGPT_TEST_RECORD"], f"rank{_rank}-restart{_restart}.json").write_text(json.dumps({
        "rank": int(_rank), "node": _env.get("SLURMD_NODENAME"), "affinity": sorted(os.sched_getaffinity(0)),
        "omp_num_threads": _env.get("OMP_NUM_THREADS"), "cpus_per_task": _env.get("SLURM_CPUS_PER_TASK"),
        "torch_threads": torch.get_num_threads() if torch else None, "master_addr": _env.get("MASTER_ADDR"),
    }))


def _linger(seconds: float) -> None:
    if not _trainer():
        return
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.write(2, f"test hook: rank {_rank} lingering {seconds:.0f} s at exit\n".encode())
    time.sleep(seconds)


if _rank is not None:
    if _env.get("MEGAGPT_TEST_RECORD"):
        atexit.register(_record)
    if _env.get("MEGAGPT_TEST_LINGER"):
        rank, restart, seconds = _env["MEGAGPT_TEST_LINGER"].split(":")
        if (rank, restart) == (_rank, _restart):
            atexit.register(_linger, float(seconds))
