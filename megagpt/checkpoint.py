"""Save and resume training through DeepSpeed's engine, published atomically.

A checkpoint is a folder `step00000050/` holding DeepSpeed's model, optimizer and scheduler state
(sharded by ZeRO), the data position, and every rank's RNG state. It is written as
`step00000050.tmp/` and renamed only once all ranks have finished, and `latest` is replaced
atomically after that: a crash while saving leaves the previous checkpoint in charge.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator

LATEST = "latest"


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def save(engine: deepspeed.DeepSpeedEngine, folder: Path, step: int, client_state: dict[str, Any]) -> Path:
    """Write the checkpoint of `step` on all ranks; returns its published folder."""
    tag = tag_for(step)
    tmp_tag = f"{tag}.tmp"
    engine.save_checkpoint(str(folder), tag=tmp_tag, client_state=client_state, save_latest=False)
    rank = dist.get_rank()
    torch.save(_rng_state(), folder / tmp_tag / f"rng_rank{rank:05d}.pt")
    dist.barrier()
    final = folder / tag
    if rank == 0:
        if final.exists():  # a re-save of the same step (e.g. after a resume): replace it
            shutil.rmtree(final)
        os.replace(folder / tmp_tag, final)
        _write_atomic(folder / LATEST, tag)
    dist.barrier()
    return final


def latest(folder: Path) -> Path | None:
    """The published checkpoint `latest` names, or None when there is none."""
    pointer = folder / LATEST
    if not pointer.is_file():
        return None
    path = folder / pointer.read_text().strip()
    if not path.is_dir():
        raise FileNotFoundError(
            f"{pointer} names {path.name}, which is missing: restore it or delete {pointer}"
        )
    return path


def load(engine: deepspeed.DeepSpeedEngine, path: Path) -> dict[str, Any]:
    """Restore engine state and this rank's RNG from `path`; returns the saved client state."""
    load_path, client_state = engine.load_checkpoint(str(path.parent), tag=path.name)
    if load_path is None:
        raise FileNotFoundError(f"DeepSpeed found no checkpoint in {path}")
    rng_file = path / f"rng_rank{dist.get_rank():05d}.pt"
    if not rng_file.is_file():
        raise FileNotFoundError(
            f"{rng_file} is missing: the checkpoint was written by fewer ranks than this run has"
        )
    _set_rng_state(torch.load(rng_file, weights_only=True))
    return client_state


def _rng_state() -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    accel = get_accelerator()
    if accel.device_name() != "cpu":
        state["accelerator"] = accel.get_rng_state()
    return state


def _set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if "accelerator" in state:
        get_accelerator().set_rng_state(state["accelerator"])


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
