"""The MPI world of a pipeline run: mpi4py's COMM_WORLD under mpiexec/srun, one local rank otherwise.

MPI is initialised only when a launcher started us (it sets PMI_*/OMPI_*/PMIX_* variables), so a
plain `python -m pipelines.build` never loads MPI and may fork worker processes safely.
"""

from __future__ import annotations

import os
import time
from typing import Any

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
