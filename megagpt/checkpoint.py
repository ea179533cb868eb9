"""Save and resume training through DeepSpeed's engine, published atomically.

A checkpoint is a folder `step00000050/` holding DeepSpeed's model, optimizer and scheduler state
(sharded by ZeRO), the data position, and every rank's RNG state. It is written as
`step00000050.tmp/` and renamed only once all ranks have finished, and `latest` is replaced
atomically after that: a crash while saving leaves the previous checkpoint in charge, and the next
save removes the partial `.tmp` folder. Only the newest `keep_last` published checkpoints stay, plus
the one the run resumed from.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator

LATEST = "latest"
TAG = re.compile(r"step(\d{8})")


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def save(engine: deepspeed.DeepSpeedEngine, folder: Path, step: int, client_state: dict[str, Any],
         keep_last: int = 0, keep: Path | None = None) -> Path:
    """Write the checkpoint of `step` on all ranks; returns its published folder.

    Afterwards only the newest `keep_last` published checkpoints remain (0 keeps all), and `keep`
    (the checkpoint the run resumed from) is never deleted.
    """
    tag = tag_for(step)
    tmp_tag = f"{tag}.tmp"
    rank = dist.get_rank()
    if rank == 0:  # partial folders of a save that crashed; none is in use, `latest` never names one
        for stale in folder.glob("step*.tmp"):
            shutil.rmtree(stale)
    dist.barrier()
    engine.save_checkpoint(str(folder), tag=tmp_tag, client_state=client_state, save_latest=False)
    torch.save(_rng_state(), folder / tmp_tag / f"rng_rank{rank:05d}.pt")
    dist.barrier()
    final = folder / tag
    if rank == 0:
        if final.exists():  # a re-save of the same step (e.g. after a resume): replace it
            shutil.rmtree(final)
        os.replace(folder / tmp_tag, final)
        _write_atomic(folder / LATEST, tag)
        if keep_last:
            prune(folder, keep_last, keep)
    dist.barrier()
    return final


def published(folder: Path) -> list[Path]:
    """The complete checkpoints in `folder`, oldest first."""
    found = [p for p in folder.iterdir() if p.is_dir() and TAG.fullmatch(p.name)] if folder.is_dir() else []
    return sorted(found, key=lambda p: p.name)


def prune(folder: Path, keep_last: int, keep: Path | None = None) -> list[Path]:
    """Delete all but the newest `keep_last` published checkpoints, never `keep`; returns the deleted."""
    protected = {keep.resolve()} if keep is not None else set()
    doomed = [p for p in published(folder)[:-keep_last] if p.resolve() not in protected]
    for path in doomed:
        shutil.rmtree(path)
    return doomed


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
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())  # on disk before it is renamed in: never an empty `latest` after a crash
    os.replace(tmp, path)
