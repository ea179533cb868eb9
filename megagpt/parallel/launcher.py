"""Rank discovery for every launcher: the torch.distributed variables from what each one sets.

deepspeed and torchrun set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT themselves.
mpirun (MPICH, Open MPI) sets only its own rank variables, and DeepSpeed's own MPI discovery
overwrites MASTER_ADDR / MASTER_PORT (the first address of `hostname -I`, port 29500, which other
jobs on the node may hold): here rank 0 picks a free port and tells the others over MPI, and
addresses given in the environment are kept. srun sets SLURM_* variables; MASTER_ADDR and
MASTER_PORT come from the batch script (one node: 127.0.0.1 by default). A plain `python` start is
a world of one.
"""

from __future__ import annotations

import os
import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def fill_rank_env() -> str:
    """Set the torch.distributed variables if the launcher did not; returns the launcher's name."""
    env = os.environ
    if "RANK" in env:
        return "torch-style launcher"
    if "PMI_RANK" in env or "OMPI_COMM_WORLD_RANK" in env:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        first = comm.Get_rank() == 0
        addr = env.get("MASTER_ADDR") or comm.bcast(
            socket.gethostbyname(socket.gethostname()) if first else None)
        port = env.get("MASTER_PORT") or comm.bcast(str(free_port()) if first else None)
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        env.update(RANK=str(comm.Get_rank()), WORLD_SIZE=str(comm.Get_size()),
                   LOCAL_RANK=str(node.Get_rank()), LOCAL_WORLD_SIZE=str(node.Get_size()),
                   MASTER_ADDR=addr, MASTER_PORT=port)
        return "mpirun"
    if "SLURM_PROCID" in env:
        if "MASTER_PORT" not in env or ("MASTER_ADDR" not in env and env.get("SLURM_NNODES", "1") != "1"):
            raise RuntimeError(
                "under srun, export MASTER_PORT (a free port) and, on several nodes, MASTER_ADDR (the "
                "first node's address) in the batch script before srun"
            )
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.update(RANK=env["SLURM_PROCID"], WORLD_SIZE=env["SLURM_NTASKS"],
                   LOCAL_RANK=env["SLURM_LOCALID"])
        return "srun"
    env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()))
    return "none (one process)"
