"""Saving (optionally in a background thread) and resuming the training state of one run."""

from __future__ import annotations

import copy
import errno
import io
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from deepspeed.accelerator import get_accelerator
from torch.distributed.checkpoint.api import CheckpointException

from megagpt.checkpoint.folders import (
    LATEST,
    CheckpointError,
    NoSpaceForCheckpoint,
    prune,
    published,
    tag_for,
    write_atomic,
)
from megagpt.checkpoint.integrity import write_checksums
from megagpt.checkpoint.pretrained import write_description
from megagpt.checkpoint.sharded import PiecesLoadPlanner, PiecesSavePlanner, install, release, sharded_state
from megagpt.checkpoint.zero_states import adam_step, set_adam_step
from megagpt.config import ModelConfig
from megagpt.formats.tokenizer import AnyTokenizer
from megagpt.parallel.layout import Layout
from megagpt.parallel.topology import Topology
from megagpt.sizing.parameters import stage_parameters

log = logging.getLogger("megagpt.checkpoint")

TRAINER_STATE = "trainer_state.pt"
LAYOUT = "layout.json"


class Checkpointer:
    """Saves the checkpoints of one run; with `async_save` each is written by a background thread.

    Create it on every rank at the same point (it makes a gloo process group, a collective)."""

    def __init__(self, engine: deepspeed.DeepSpeedEngine, topo: Topology, folder: Path,
                 model_config: ModelConfig, tokenizer: AnyTokenizer, keep_last: int = 0,
                 keep: Path | None = None, async_save: bool = False):
        self.engine, self.topo, self.folder = engine, topo, Path(folder)
        self.model_config, self.tokenizer = model_config, tokenizer
        self.keep_last, self.keep, self.async_save = keep_last, keep, async_save
        # DCP's planning, the checksums and the publish barrier run here, never on the training
        # groups: an async save's thread would otherwise interleave its collectives with training's.
        self.group = dist.new_group(backend="gloo")
        self._writer: threading.Thread | None = None
        self._failure: BaseException | None = None

    def save(self, step: int, client_state: dict[str, Any]) -> Path:
        """Checkpoint `step` on all ranks; returns the folder it is (or, async, will be) published as.

        Afterwards only the newest `keep_last` published checkpoints remain (0 keeps all), and neither
        `keep` (the checkpoint the run resumed from) nor the one just written is deleted."""
        self.wait()  # one save at a time: its .tmp folder, then `latest`, in step order
        # Everything the step's state is, taken now: with async_save a host copy, since training goes
        # on changing the weights; otherwise views of the live buffers, written before this returns.
        state = sharded_state(self.engine, self.topo, copy_to_host=self.async_save)
        extra = {"trainer": copy.deepcopy(_trainer_state(self.engine, client_state)), "rng": _rng_state()}
        if not self.async_save:
            return self._write(step, state, extra)
        self._writer = threading.Thread(target=self._write_in_background, args=(step, state, extra),
                                        name=f"checkpoint-{tag_for(step)}", daemon=True)
        self._writer.start()
        return self.folder / tag_for(step)

    def wait(self) -> None:
        """Block until a background save has been published; raise its error if it failed."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure

    def _write_in_background(self, step: int, state: dict[str, Any], extra: dict[str, Any]) -> None:
        try:
            log.info("checkpoint %s written in the background", self._write(step, state, extra))
        except BaseException as e:  # re-raised by wait(), in the training thread
            self._failure = e

    def _write(self, step: int, state: dict[str, Any], extra: dict[str, Any]) -> Path:
        tag, folder, group = tag_for(step), self.folder, self.group
        tmp = folder / f"{tag}.tmp"
        rank, world = dist.get_rank(), dist.get_world_size()
        if rank == 0:  # partial folders of a save that crashed; none is in use, `latest` never names one
            for stale in folder.glob("step*.tmp"):
                shutil.rmtree(stale)
        dist.barrier(group=group)
        # Each phase ends with all ranks agreeing it went well (also the barrier between them):
        # a rank whose disk filled up must not leave the others waiting in the next collective.
        self._agree(tag, _attempt(self._write_files, tmp, state, extra))
        self._agree(tag, _attempt(write_checksums, tmp, rank, world, group))
        final = folder / tag
        if rank == 0:
            if final.exists():  # a re-save of the same step (e.g. after a resume): replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
            write_atomic(folder / LATEST, tag)
            if self.keep_last:
                prune(folder, self.keep_last, self.keep)
        dist.barrier(group=group)
        return final

    def _write_files(self, tmp: Path, state: dict[str, Any], extra: dict[str, Any]) -> None:
        rank = dist.get_rank()
        # DCP's one-file-a-rank writer keeps every piece it wrote (a copy, for a view into a swap
        # buffer) until the file is closed: with offloaded states that is the whole rank in host
        # memory (12 bytes a parameter; the 1.5B's save was OOM-killed). One file a piece keeps one.
        one_file = not self.topo.layout.offloads()
        try:
            dcp.save(state, storage_writer=dcp.FileSystemWriter(tmp, single_file_per_rank=one_file),
                     planner=PiecesSavePlanner(), process_group=self.group)
        finally:
            release(state)
        _save_small(extra["rng"], tmp / f"rng_rank{rank:05d}.pt")
        if rank == 0:
            _save_small(extra["trainer"], tmp / TRAINER_STATE)
            (tmp / LAYOUT).write_text(json.dumps(self.topo.layout.to_dict()))
            write_description(tmp, self.model_config, self.tokenizer)

    def _agree(self, tag: str, failure: BaseException | None) -> None:
        """Collectively: if any rank failed to write its part of `tag`, every rank raises, after
        the partial folder is removed (`latest` still names the last good checkpoint). A full disk
        is a NoSpaceForCheckpoint on all ranks; another error is re-raised where it happened."""
        mine = None
        if failure is not None:
            mine = (_no_space(failure, self.folder), f"{type(failure).__name__}: {failure}")
        everyone: list[tuple[bool, str] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine, group=self.group)
        failed = {rank: what for rank, what in enumerate(everyone) if what is not None}
        if not failed:
            return
        if dist.get_rank() == 0:
            shutil.rmtree(self.folder / f"{tag}.tmp", ignore_errors=True)
        dist.barrier(group=self.group)
        if any(no_space for no_space, _ in failed.values()):
            raise NoSpaceForCheckpoint(self._no_space_message(tag))
        if failure is not None:
            raise failure
        first = min(failed)
        raise CheckpointError(f"checkpoint {tag} not saved: rank {first} failed to write its part "
                              f"({failed[first][1][:300]}); its partial folder was removed")

    def _no_space_message(self, tag: str) -> str:
        free = shutil.disk_usage(self.folder).free  # with the partial folder removed
        need, basis = self._expected_bytes()
        pointer = self.folder / LATEST
        kept = (f"`latest` still names {pointer.read_text().strip()}" if pointer.is_file()
                else "no checkpoint had been published yet")
        return (f"checkpoint {tag} not saved: no space left in checkpoint.dir {self.folder}: {_size(free)} "
                f"free, and the save needs about {_size(need)} ({basis}); its partial {tag}.tmp was removed "
                f"and {kept}. Free space there (checkpoint.keep_last deletes older checkpoints) or set "
                "checkpoint.dir on a larger disk, then resume")

    def _expected_bytes(self) -> tuple[int, str]:
        """What a save of this run takes: the previous checkpoint's size, or 12 bytes a parameter
        (fp32 weights and Adam's two moments) and the tokenizer's files before the first one."""
        done = published(self.folder)
        if done:
            size = sum(f.stat().st_size for f in done[-1].rglob("*") if f.is_file())
            return size, f"the size of {done[-1].name}"
        params = stage_parameters(self.model_config)
        files = sum(Path(src).stat().st_size for src in self.tokenizer.files())
        return 12 * params + files, f"12 bytes for each of {params:,} parameters, and the tokenizer"


def saved_layout(path: Path) -> Layout:
    """The layout that wrote the checkpoint `path`."""
    file = path / LAYOUT
    if not file.is_file():
        raise CheckpointError(f"{file} is missing: {path} is not a megagpt training checkpoint (or is "
                              "damaged); resume from another one")
    return Layout.from_dict(json.loads(file.read_text()))


def load(engine: deepspeed.DeepSpeedEngine, topo: Topology, path: Path) -> dict[str, Any]:
    """Restore weights, Adam state, lr schedule, step counts and RNG from `path`, whatever layout
    wrote it; returns the saved client state. Each rank reads only the pieces it owns now. Under
    another layout every rank takes rank 0's RNG (dropout streams cannot follow a change of layout)."""
    same_layout = saved_layout(path).same_ranks(topo.layout)
    state = sharded_state(engine, topo, copy_to_host=False, for_load=True)  # Adam's state made first
    dcp.load(state, storage_reader=dcp.FileSystemReader(path), planner=PiecesLoadPlanner(list(state)))
    install(engine, state)
    trainer = torch.load(path / TRAINER_STATE, weights_only=True)
    set_adam_step(engine, trainer["adam_step"])
    engine.lr_scheduler.load_state_dict(trainer["lr_scheduler"])
    # load_state_dict restores the schedule's position but leaves the optimizer at the first rate.
    for group, lr in zip(engine.lr_scheduler.optimizer.param_groups, engine.lr_scheduler.get_last_lr()):
        group["lr"] = lr
    engine.global_steps = trainer["global_steps"]
    engine.global_samples = trainer["global_samples"]
    rng_file = path / f"rng_rank{dist.get_rank() if same_layout else 0:05d}.pt"
    _set_rng_state(torch.load(rng_file, weights_only=True))
    return trainer["client_state"]


def _attempt(write: Callable[..., None], *args: Any) -> BaseException | None:
    """Run `write`; the error that stopped it (a file system's, or DCP's gathered ones), or None."""
    try:
        write(*args)
    except (OSError, CheckpointException) as e:
        return e
    return None


def _no_space(error: BaseException, folder: Path) -> bool:
    """Whether `error` came from a full disk (or quota) under `folder`. torch's writer, which DCP's
    files go through, reports a full disk as "unexpected pos" without an errno: a folder left with
    less than 1 MiB free counts as full too."""
    return _errno_no_space(error) or shutil.disk_usage(folder).free < 2**20


def _errno_no_space(error: BaseException | None) -> bool:
    if error is None:
        return False
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(error, CheckpointException):  # DCP gathers every rank's errors
        return any(_errno_no_space(wrapped) for wrapped, _ in error.failures.values())
    return _errno_no_space(error.__cause__ or error.__context__)


def _save_small(obj: Any, path: Path) -> None:
    """torch.save through Python's file: a full disk is an OSError with its errno (torch's own
    writer turns it into a RuntimeError without one)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    path.write_bytes(buffer.getbuffer())


def _size(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _trainer_state(engine: deepspeed.DeepSpeedEngine, client_state: dict[str, Any]) -> dict[str, Any]:
    return {"adam_step": adam_step(engine), "global_steps": engine.global_steps,
            "global_samples": engine.global_samples, "lr_scheduler": engine.lr_scheduler.state_dict(),
            "client_state": client_state}


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
