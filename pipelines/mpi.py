"""The MPI world of a pipeline run: mpi4py's COMM_WORLD under mpiexec/srun, one local rank otherwise.

MPI is initialised only when a launcher started us (it sets PMI_*/OMPI_*/PMIX_* variables), so a
plain `python -m pipelines.build` never loads MPI and may fork worker processes safely.

`abort` ends every rank when one fails (the others may wait in a collective): MPI_Abort exits
without Python's clean-up, so it first flushes what the rank printed or logged, and unlinks the
node's MPICH shared-memory segment (/dev/shm/mpich_shm_*), which MPICH removes only at a clean
finalize. The ranks still running keep their mappings until they are killed; only the name goes.
On several nodes, only the aborting rank's node is cleaned: the others' segments stay behind.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

_LAUNCHER_VARS = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")


class LocalComm:
    """The subset of an mpi4py communicator the pipelines use, for a single process."""

    rank, size = 0, 1

    def Get_rank(self) -> int:  # noqa: N802 (mpi4py's names)
        return 0

    def Get_size(self) -> int:  # noqa: N802
        return 1

    def allreduce(self, value: Any, op: Any = None) -> Any:
        return value

    def allgather(self, value: Any) -> list[Any]:
        return [value]

    def gather(self, value: Any, root: int = 0) -> list[Any]:
        return [value]

    def bcast(self, value: Any, root: int = 0) -> Any:
        return value

    def Barrier(self) -> None:  # noqa: N802
        pass


def settle(comm: Any, poll_seconds: float = 0.01) -> None:
    """Wait for every rank without spinning: a rank that arrives early sleeps between tests.

    MPICH busy-polls inside blocking collectives; a rank done with its share would burn a core
    that the ranks still working need (bench/pipeline.py on 2 busy cores: 83 CPU seconds for
    a build that takes 69 with this).
    Calling this before a collective makes the collective itself start when all are there.
    """
    if comm.Get_size() == 1:
        return
    request = comm.Ibarrier()
    while not request.Test():
        time.sleep(poll_seconds)


def world() -> Any:
    """COMM_WORLD when launched by an MPI launcher, else a LocalComm."""
    if any(v in os.environ for v in _LAUNCHER_VARS):
        from mpi4py import MPI

        return MPI.COMM_WORLD
    return LocalComm()


def abort(comm: Any, code: int) -> NoReturn:
    """End all ranks with exit `code` (MPI_Abort), after flushing this rank's output and removing
    the MPICH shared-memory segments it maps."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    for segment in mpich_segments():
        segment.unlink(missing_ok=True)
    comm.Abort(code)
    raise SystemExit(code)  # not reached: MPI_Abort does not return


def mpich_segments(maps: Path = Path("/proc/self/maps")) -> list[Path]:
    """The /dev/shm/mpich_shm_* files this process has mapped (none off Linux)."""
    try:
        lines = maps.read_text().splitlines()
    except OSError:
        return []
    names = {line.split()[-1] for line in lines if "/dev/shm/mpich_shm_" in line}
    return sorted(Path(name) for name in names if not name.endswith("(deleted)"))
