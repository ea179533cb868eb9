"""Rank discovery for every launcher: the torch.distributed variables from what each one sets.

deepspeed and torchrun set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT themselves.
mpirun (MPICH, Open MPI) sets only its own rank variables, and DeepSpeed's own MPI discovery
overwrites MASTER_ADDR / MASTER_PORT (the first address of `hostname -I`, port 29500, which other
jobs on the node may hold): here rank 0 picks a free port and tells the others over MPI, and
addresses given in the environment are kept. srun sets SLURM_* variables; MASTER_ADDR and
MASTER_PORT come from the batch script (one node: 127.0.0.1 by default). A plain `python` start is
a world of one.

Which accelerator is a rank's: DeepSpeed takes LOCAL_RANK as the device index (its engine, ZeRO-3's
Init), which holds only where every task sees all devices of its node. A site's --gpus-per-task=1
or --gpu-bind (closest, single, map_gpu) shows each task one device, or its socket's, renumbered
from 0: `device_index` maps the rank onto what the task sees, and `bind_device` makes LOCAL_RANK that
index before DeepSpeed reads it.

Under cluster/gpt2_xl.slurm, rank 0 publishes the run's exit code after the final barrier
(`publish_exit`): the script decides to requeue from it rather than from srun's status.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


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


def device_index(local_rank: int, visible: int) -> int:
    """The index, among the `visible` devices this task sees, of rank `local_rank`'s own device.

    All of the node's devices visible: the local rank. One (--gpus-per-task=1, --gpu-bind=single or
    map_gpu): 0. A share, e.g. --gpu-bind=closest with each socket's ranks seeing its 4 GPUs: the
    local rank's place in its block of consecutive ranks (srun's default block distribution).
    """
    if visible < 1:
        raise RuntimeError(f"local rank {local_rank} sees no accelerator: check the job's --gpus-per-node "
                           "or --gpus-per-task and the site's device visibility")
    return local_rank % visible


def bind_device() -> int | None:
    """Pick and set this rank's accelerator; LOCAL_RANK becomes its index (None on CPU)."""
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    if accelerator.device_name() == "cpu":
        return None
    index = device_index(int(os.environ.get("LOCAL_RANK", 0)), accelerator.device_count())
    os.environ["LOCAL_RANK"] = str(index)  # what DeepSpeed's engine and ZeRO-3 take as the device
    accelerator.set_device(index)
    return index


def publish_exit(code: int) -> None:
    """Write `code` to $MEGAGPT_EXIT_FILE when set (atomically: a reader sees all of it or nothing)."""
    path = os.environ.get("MEGAGPT_EXIT_FILE")
    if not path:
        return
    tmp = Path(f"{path}.tmp")
    tmp.write_text(f"{code}\n")
    os.replace(tmp, path)
