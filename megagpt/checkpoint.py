"""Save and resume training: one copy of the state, every rank writing its own part, resharded on load.

A checkpoint is a folder `step00000050/` written with torch.distributed.checkpoint (DCP): each rank
writes one file `__R_0.distcp` holding only what it owns (its ZeRO partition of the fp32 weights and
of Adam's two moments, of its tensor-parallel slice, of its pipeline stage), and `.metadata` says,
for every parameter of the one-process model, which rectangle of it each piece is. Under ZeRO-3 a
rank's range of its tp slice is at most three rectangles (a partial row, whole rows, a partial row),
views of its flat fp32 partition; a tp split into blocks (QKV) cuts them further. Nothing is written
twice: tied and tp-replicated parameters are written by one rank only, about 12 bytes a parameter in
fp32. Beside it: `trainer_state.pt` (Adam's step, lr schedule, step counts, client state: data
position), `rng_rank00000.pt`, ... (each rank's generators), `layout.json`, `model_config.json` and
the tokenizer. Loading under any layout (dp, tp, pp, ZeRO stage) asks DCP for exactly the
rectangles the new rank owns, so each rank reads only those byte ranges and nobody holds the model.
See docs/checkpoints.md for why DCP rather than DeepSpeed's own or universal checkpoints.

The folder is written as `step00000050.tmp/`, renamed only once all ranks have finished, and
`latest` is replaced atomically after that: a crash while saving leaves the previous checkpoint in
charge, and the next save removes the partial `.tmp` folder. With `checkpoint.async_save` the state
is copied to host memory and a background thread writes, hashes and publishes it while training
continues (the coordination runs over a process group of its own, so it never interleaves with
training collectives); the next save, and the end of the run, wait for it. Only the newest
`keep_last` published checkpoints stay, plus the one the run resumed from and the one `latest` names.

`checksums.json` records the size and xxh3-128 hash of every file, hashed at save by all ranks
(each a share of the files), and verify() checks them before a resume: a truncated or overwritten
file is named, with the previous checkpoint to fall back to, instead of failing deep inside torch.
xxh3 rather than sha256: the checks guard against damage, not forgery, and xxh3 hashes about 6x
faster (bench/integrity.py), which matters when every save and resume reads the whole state back.

Every checkpoint is self-describing: `model_config.json` and the tokenizer's file(s) sit beside the
shards, so evaluation, generation, fine-tuning and export need nothing but the folder. A *model
folder* (written by `megagpt.convert from-hf` and `megagpt.finetune`) has the same two plus one
`model.safetensors`; everything that reads a model accepts either.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import xxhash
from deepspeed.accelerator import get_accelerator
from deepspeed.utils import (
    safe_get_local_fp32_param,
    safe_get_local_optimizer_state,
    safe_set_local_fp32_param,
    safe_set_local_optimizer_state,
)
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    MetadataIndex,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import (
    LoadPlan,
    ReadItem,
    SavePlan,
    TensorWriteData,
    WriteItem,
    WriteItemType,
)
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

from megagpt.config import ModelConfig
from megagpt.model import GPT
from megagpt.parallel.layout import Layout
from megagpt.parallel.topology import Topology
from megagpt.tokenizer import AnyTokenizer, load_tokenizer

log = logging.getLogger("megagpt.checkpoint")
LATEST = "latest"
TAG = re.compile(r"step(\d{8})")
MODEL_CONFIG = "model_config.json"
WEIGHTS = "model.safetensors"
METADATA = ".metadata"  # DCP's: which piece of which parameter is where
TRAINER_STATE = "trainer_state.pt"
LAYOUT = "layout.json"
STATES = ("param", "exp_avg", "exp_avg_sq")  # fp32 master weight and Adam's moments, per parameter
CHECKSUMS = "checksums.json"


class CheckpointError(ValueError):
    """A checkpoint or model folder that cannot be used as asked; the message names the file and the fix."""


class DamagedCheckpoint(CheckpointError):
    """A file of a checkpoint is missing, truncated or altered since it was saved."""


def tag_for(step: int) -> str:
    return f"step{step:08d}"


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
        dcp.save(state, storage_writer=dcp.FileSystemWriter(tmp), planner=_PiecesSavePlanner(),
                 process_group=group)
        torch.save(extra["rng"], tmp / f"rng_rank{rank:05d}.pt")
        if rank == 0:
            torch.save(extra["trainer"], tmp / TRAINER_STATE)
            (tmp / LAYOUT).write_text(json.dumps(self.topo.layout.to_dict()))
            write_description(tmp, self.model_config, self.tokenizer)
        dist.barrier(group=group)
        write_checksums(tmp, rank, world, group)
        final = folder / tag
        if rank == 0:
            if final.exists():  # a re-save of the same step (e.g. after a resume): replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
            _write_atomic(folder / LATEST, tag)
            if self.keep_last:
                prune(folder, self.keep_last, self.keep)
        dist.barrier(group=group)
        return final


def published(folder: Path) -> list[Path]:
    """The complete checkpoints in `folder`, oldest first."""
    found = [p for p in folder.iterdir() if p.is_dir() and TAG.fullmatch(p.name)] if folder.is_dir() else []
    return sorted(found, key=lambda p: p.name)


def prune(folder: Path, keep_last: int, keep: Path | None = None) -> list[Path]:
    """Delete all but the newest `keep_last` published checkpoints, never `keep` nor the one `latest`
    names (which "newest" by step number can miss when the folder holds a longer run's checkpoints);
    returns the deleted."""
    protected = {p.resolve() for p in (keep, _named_by_latest(folder)) if p is not None}
    doomed = [p for p in published(folder)[:-keep_last] if p.resolve() not in protected]
    for path in doomed:
        shutil.rmtree(path)
    return doomed


def latest(folder: Path) -> Path | None:
    """The published checkpoint `latest` names, or None when there is none."""
    pointer = folder / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    if not TAG.fullmatch(name):
        found = published(folder)
        fix = (f"write the name of the newest good one ({found[-1].name}) into it" if found
               else "no checkpoint is here: delete it")
        raise CheckpointError(f"{pointer} holds {name!r}, not a checkpoint name like step00000050: {fix}")
    path = folder / name
    if not path.is_dir():
        raise CheckpointError(
            f"{pointer} names {path.name}, which is missing: restore it or delete {pointer}"
        )
    return path


def _named_by_latest(folder: Path) -> Path | None:
    try:
        return latest(folder)
    except CheckpointError:
        return None


def previous(path: Path) -> Path | None:
    """The published checkpoint saved before `path` in its folder, if any."""
    earlier = [p for p in published(path.parent) if p.name < path.name]
    return earlier[-1] if earlier else None


def write_checksums(path: Path, rank: int = 0, world: int = 1, group: dist.ProcessGroup | None = None
                    ) -> None:
    """Record size and xxh3-128 hash of every file under `path` in checksums.json. With world > 1 a
    collective over `group` (default: the world): each rank hashes a share of the files (reading
    back what was just written, from the page cache) and rank 0 writes the merged list."""
    names = _files(path)
    mine = {name: _digest(path / name) for name in names[rank::world]}
    shares = [mine]
    if world > 1:
        shares = [None] * world
        dist.all_gather_object(shares, mine, group=group)
    if rank == 0:
        merged = {name: entry for share in shares for name, entry in share.items()}
        (path / CHECKSUMS).write_text(json.dumps(dict(sorted(merged.items())), indent=1) + "\n")


def verify(path: Path, names: list[str] | None = None, rank: int = 0, world: int = 1) -> None:
    """Raise DamagedCheckpoint naming the first file of `path` (of `names`, when given) that is
    missing or differs from checksums.json, and the checkpoint to use instead. With world > 1 a
    collective: each rank checks a share and all raise the same error."""
    record = path / CHECKSUMS
    try:
        expected = json.loads(record.read_text())
    except FileNotFoundError:
        problems = [f"{record} is missing (every checkpoint and model folder megagpt writes has one)"]
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        problems = [f"{record} is unreadable ({e})"]
    else:
        wanted = sorted(expected) if names is None else names
        problems = [p for name in wanted[rank::world] if (p := _problem(path / name, expected.get(name)))]
    if world > 1:
        shares: list[list[str] | None] = [None] * world
        dist.all_gather_object(shares, problems)
        problems = [p for share in shares for p in share]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        before = previous(path)
        fix = (f"the previous checkpoint is {before}: resume from it with train.resume={before} "
               "(train.resume=auto falls back to it by itself)" if before is not None
               else "no earlier checkpoint is in its folder: start again in a new log.dir")
        raise DamagedCheckpoint(f"checkpoint {path} is damaged: {problems[0]}{more}; {fix}")


def _files(path: Path) -> list[str]:
    return sorted(str(f.relative_to(path)) for f in path.rglob("*") if f.is_file() and f.name != CHECKSUMS)


def _digest(file: Path) -> dict[str, Any]:
    with file.open("rb") as f:
        digest = hashlib.file_digest(f, xxhash.xxh3_128).hexdigest()
        return {"bytes": os.fstat(f.fileno()).st_size, "xxh3_128": digest}


def _problem(file: Path, expected: dict[str, Any] | None) -> str | None:
    """What is wrong with `file` against its checksums.json entry, or None when nothing is."""
    if expected is None:
        return f"{file} is not listed in {CHECKSUMS}"
    if not file.is_file():
        return f"{file} is missing"
    size = file.stat().st_size
    if size != expected["bytes"]:
        return f"{file} has {size} bytes, {expected['bytes']} when saved (truncated or overwritten)"
    if _digest(file)["xxh3_128"] != expected["xxh3_128"]:
        return f"{file} does not match its checksum in {CHECKSUMS} (overwritten since it was saved)"
    return None


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
    dcp.load(state, storage_reader=dcp.FileSystemReader(path), planner=_PiecesLoadPlanner())
    _install(engine, state)
    trainer = torch.load(path / TRAINER_STATE, weights_only=True)
    for adam in engine.optimizer.optimizer.state.values():
        adam["step"].fill_(trainer["adam_step"])
    engine.lr_scheduler.load_state_dict(trainer["lr_scheduler"])
    # load_state_dict restores the schedule's position but leaves the optimizer at the first rate.
    for group, lr in zip(engine.lr_scheduler.optimizer.param_groups, engine.lr_scheduler.get_last_lr()):
        group["lr"] = lr
    engine.global_steps = trainer["global_steps"]
    engine.global_samples = trainer["global_samples"]
    rng_file = path / f"rng_rank{dist.get_rank() if same_layout else 0:05d}.pt"
    _set_rng_state(torch.load(rng_file, weights_only=True))
    return trainer["client_state"]


def write_description(folder: Path, model_config: ModelConfig, tokenizer: AnyTokenizer) -> None:
    """model_config.json and a copy of the tokenizer's file(s): what a reader needs besides weights."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MODEL_CONFIG).write_text(json.dumps(dataclasses.asdict(model_config), indent=2) + "\n")
    for src, name in tokenizer.files().items():
        if Path(src).resolve() != (folder / name).resolve():
            shutil.copyfile(src, folder / name)


def save_model(folder: Path, state: dict[str, torch.Tensor], model_config: ModelConfig,
               tokenizer: AnyTokenizer) -> None:
    """A model folder: model.safetensors (fp32, the tied lm_head stored once), config, tokenizer."""
    state = {k: v.detach().float().contiguous() for k, v in state.items() if k != "lm_head.weight"}
    write_description(folder, model_config, tokenizer)
    save_file(state, str(folder / WEIGHTS))
    write_checksums(folder)


def resolve(path: str | Path) -> Path:
    """The checkpoint or model folder `path` means: itself, or what `latest` names in it, in its
    checkpoints/ (a run folder)."""
    path = Path(path)
    for candidate in (path, path / "checkpoints"):
        found = latest(candidate) if candidate.is_dir() else None
        if found is not None:
            return found
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


def consolidated_state_dict(checkpoint_folder: str | Path) -> dict[str, torch.Tensor]:
    """The full fp32 model state of a checkpoint folder, whatever layout wrote it, or of a model
    folder, keyed like GPT.state_dict() (lm_head.weight is the tied wte). One copy: each parameter
    is read from its pieces straight into its own tensor."""
    folder = resolve(checkpoint_folder)
    if (folder / WEIGHTS).is_file():
        verify(folder, [WEIGHTS])
        state = {k: v.float() for k, v in load_file(str(folder / WEIGHTS)).items()}
    elif (folder / METADATA).is_file():
        verify(folder, _weight_files(folder))
        metadata = dcp.FileSystemReader(folder).read_metadata().state_dict_metadata
        prefix = f"{STATES[0]}."
        state = {fqn.removeprefix(prefix): torch.empty(md.size, dtype=md.properties.dtype)
                 for fqn, md in metadata.items() if fqn.startswith(prefix)}
        _read_weights(folder, state)
    else:
        raise FileNotFoundError(
            f"{folder} holds neither {WEIGHTS} nor a checkpoint's {METADATA}: pass a checkpoint folder "
            "(stepNNNNNNNN), a checkpoints/ or run folder with `latest`, or a model folder"
        )
    state.setdefault("lm_head.weight", state["transformer.wte.weight"])  # tied
    return state


def _weight_files(folder: Path) -> list[str]:
    return [METADATA, *sorted(f.name for f in folder.glob("*.distcp"))]


def _read_weights(folder: Path, state: dict[str, torch.Tensor]) -> None:
    """Fill `state` (one-process names -> tensors of the full shape) from a checkpoint's fp32
    weights, in this process alone (no process group needed)."""
    with warnings.catch_warnings():  # DCP warns that it reads in one process: that is the point here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load({f"{STATES[0]}.{name}": tensor for name, tensor in state.items()},
                 storage_reader=dcp.FileSystemReader(folder), planner=DefaultLoadPlanner(), no_dist=True)


def read_model_config(checkpoint_folder: str | Path) -> ModelConfig:
    """The ModelConfig of a checkpoint or model folder: its model_config.json."""
    folder = resolve(checkpoint_folder)
    if not (folder / MODEL_CONFIG).is_file():
        raise FileNotFoundError(f"{folder} has no {MODEL_CONFIG}: pass a checkpoint or model folder "
                                "megagpt wrote (they all describe their model)")
    return ModelConfig(**json.loads((folder / MODEL_CONFIG).read_text()))


def find_tokenizer(checkpoint_folder: str | Path) -> AnyTokenizer:
    """The tokenizer saved in a checkpoint or model folder."""
    return load_tokenizer(resolve(checkpoint_folder))


def load_pretrained(checkpoint_folder: str | Path, device: torch.device | str | None = None
                    ) -> tuple[GPT, AnyTokenizer, torch.device]:
    """The model (eval mode, on the accelerator unless `device` says otherwise), its tokenizer and
    the device, from any checkpoint or model folder. Checkpoint weights are read straight into the
    model's own tensors, parameter by parameter, never held twice."""
    device = torch.device(device or get_accelerator().device_name())
    folder = resolve(checkpoint_folder)
    model = GPT(read_model_config(folder))
    if (folder / METADATA).is_file():
        verify(folder, _weight_files(folder))
        metadata = dcp.FileSystemReader(folder).read_metadata().state_dict_metadata
        saved = {fqn.removeprefix(f"{STATES[0]}."): tuple(md.size) for fqn, md in metadata.items()
                 if fqn.startswith(f"{STATES[0]}.") and isinstance(md, TensorStorageMetadata)}
        _check_weights_fit(model, saved, folder)
        own = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied to wte
        _read_weights(folder, own)
    else:
        state = consolidated_state_dict(folder)
        _check_weights_fit(model, {k: tuple(v.shape) for k, v in state.items() if k != "lm_head.weight"},
                           folder)
        model.load_state_dict(state)
    return model.to(device).eval(), find_tokenizer(folder), device


def _check_weights_fit(model: GPT, got: dict[str, tuple[int, ...]], folder: Path) -> None:
    """Refuse weights (name -> shape) that are not those model_config.json describes, naming both."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items() if name != "lm_head.weight"}
    wrong = [f"{name} is {got[name]} in the weights but {shape} by the config"
             for name, shape in expected.items() if name in got and got[name] != shape]
    wrong += [f"{name} is missing from the weights" for name in expected.keys() - got.keys()]
    wrong += [f"the weights hold {name}, which the config has no place for"
              for name in got.keys() - expected.keys()]
    if wrong:
        c = model.config
        raise CheckpointError(
            f"{folder / MODEL_CONFIG} (n_layer={c.n_layer}, n_embd={c.n_embd}, vocab_size={c.vocab_size}, "
            f"block_size={c.block_size}) disagrees with the weights in {folder}: {wrong[0]}"
            f"{f' (and {len(wrong) - 1} more)' if len(wrong) > 1 else ''}; "
            f"fix {MODEL_CONFIG} to describe the weights, or export the model again"
        )


def _local_parameters(engine: deepspeed.DeepSpeedEngine) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """This rank's parameters with their one-process names (a pipeline stage's StageGPT names them so)."""
    yield from engine.module.named_parameters()


@dataclasses.dataclass
class Pieces:
    """A rank's part of one state (weight or moment) of one parameter: rectangles of the
    one-process tensor of shape `shape`, keyed by their offsets in it. `flat` is the rank's
    contiguous range that the rectangles are views of (what a load writes back to DeepSpeed)."""

    shape: torch.Size
    flat: torch.Tensor
    rectangles: dict[tuple[int, ...], torch.Tensor]

    def chunks(self) -> list[ChunkStorageMetadata]:
        return [ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=view.shape)
                for offsets, view in self.rectangles.items()]


def rectangles(flat: torch.Tensor, start: int, local_shape: tuple[int, ...], split: tuple[int, int] | None,
               tp_rank: int, tp_size: int) -> dict[tuple[int, ...], torch.Tensor]:
    """`flat`, elements [start, start + len) of this rank's row-major tp slice of shape local_shape,
    as views shaped like rectangles of the one-process tensor, keyed by their offsets there.

    A range of a matrix is a partial row, whole rows and a partial row. The tp slice (take_split)
    holds, of each of `parts` equal blocks along `dim`, the tp_rank-th of tp_size pieces, so a
    rectangle crossing a block boundary along `dim` is cut there."""
    end = start + flat.numel()
    local: list[tuple[tuple[int, ...], torch.Tensor]] = []
    if len(local_shape) == 1:
        if end > start:
            local.append(((start,), flat))
    else:
        cols = local_shape[1]
        pos = start
        while pos < end:
            row, col = divmod(pos, cols)
            if col or end - pos < cols:  # a partial row
                span = min(cols - col, end - pos)
                local.append(((row, col), flat[pos - start:pos - start + span].view(1, span)))
            else:  # whole rows
                span = (end - pos) // cols * cols
                local.append(((row, 0), flat[pos - start:pos - start + span].view(-1, cols)))
            pos += span
    if split is None:
        return dict(local)
    dim, parts = split
    block = local_shape[dim] // parts
    out = {}
    for offsets, view in local:
        lo, hi = offsets[dim], offsets[dim] + view.shape[dim]
        while lo < hi:
            b = lo // block
            upto = min(hi, (b + 1) * block)
            where = list(offsets)
            where[dim] = b * block * tp_size + tp_rank * block + lo - b * block
            out[tuple(where)] = view.narrow(dim, lo - offsets[dim], upto - lo)
            lo = upto
    return out


def sharded_state(engine: deepspeed.DeepSpeedEngine, topo: Topology, copy_to_host: bool,
                  for_load: bool = False) -> dict[str, Pieces]:
    """This rank's fp32 weights and Adam moments as Pieces, keyed "param.NAME", "exp_avg.NAME",
    "exp_avg_sq.NAME" by one-process name. For saving (for_load False) a parameter replicated over
    tp (LayerNorms, row-parallel biases) is taken from tp rank 0 only and the tied embedding from
    the first stage only: each piece is written once. `copy_to_host` copies the pieces to host
    memory (async save: training goes on changing the originals). Creates Adam's state where torch
    has not yet (a resume before the first step): a load needs somewhere to put the moments."""
    _link_adam_state(engine)
    tp_size = topo.layout.tp
    state: dict[str, Pieces] = {}
    for name, param in _local_parameters(engine):
        split = getattr(param, "tp_split", None)
        if not for_load and ((split is None and topo.tp_rank) or (name.startswith("transformer.wte.")
                                                                   and topo.pp_rank)):
            continue
        local_shape = tuple(getattr(param, "ds_shape", param.shape))
        shape = list(local_shape)
        if split is not None:
            shape[split[0]] *= tp_size
        for key in STATES:
            start, flat = _local_range(param, key, name)
            if copy_to_host or (for_load and hasattr(param, "ds_tensor")):
                # A host copy to write from, or (ZeRO-3) to read into and hand to DeepSpeed in _install:
                # its getter returns a copy, not its storage, where the fp32 state is offloaded.
                flat = flat.to("cpu", copy=True)
            pieces = rectangles(flat, start, local_shape, split, topo.tp_rank, tp_size)
            state[f"{key}.{name}"] = Pieces(torch.Size(shape), flat, pieces)
    return state


def _local_range(param: torch.nn.Parameter, key: str, name: str) -> tuple[int, torch.Tensor]:
    """(start, values): this rank's ZeRO range of `param`'s (tp-local, flattened) fp32 weight or
    Adam moment `key`, padding cut."""
    if hasattr(param, "ds_tensor"):  # ZeRO-3: equal ceil-sized partitions, the last one padded
        size = param.ds_tensor.ds_numel
        start = min(param.ds_numel, size * dist.get_rank(group=param.ds_process_group))
        return start, _get_local(param, key)[: min(size, param.ds_numel - start)]
    mapping = getattr(param, "_hp_mapping", None)  # ZeRO-1/2: a fragment of the flat partition, or none
    if mapping is None:
        if hasattr(param, "_hp_mapping"):
            return 0, torch.empty(0)
        raise CheckpointError(f"{name}: no ZeRO fp32 state to checkpoint; megagpt checkpoints ZeRO stages "
                              "1-3: set parallel.zero_stage to 1, 2, 3 or auto")
    value = mapping.hp_fragment if key == STATES[0] else mapping.get_optim_state_fragment(key)
    return mapping.lp_fragment_address.start, value.flatten()


def _install(engine: deepspeed.DeepSpeedEngine, state: dict[str, Pieces]) -> None:
    """After a load into `state`: hand ZeRO-3's fp32 ranges to DeepSpeed, and refresh the model's own
    (bf16 on a GPU) weights from the fp32 ones, which the optimizer does not do until its next step.
    ZeRO-1/2's ranges were views of DeepSpeed's storage: loaded in place."""
    for name, param in _local_parameters(engine):
        if not hasattr(param, "ds_tensor"):
            continue
        for key in STATES:
            loaded = state[f"{key}.{name}"].flat
            padded = _get_local(param, key).detach().clone()  # the setters take the padded partition
            padded[: loaded.numel()].copy_(loaded)
            if key == STATES[0]:
                safe_set_local_fp32_param(param, padded)
                # The partition the forward gathers: the setter updates only the fp32 master.
                param.ds_tensor.data.copy_(padded.to(param.ds_tensor.device, param.ds_tensor.dtype))
            else:
                safe_set_local_optimizer_state(param, padded, key)
    if hasattr(engine.optimizer, "update_lp_params"):  # ZeRO-1/2: fp32 partitions -> all weights
        engine.optimizer.update_lp_params()


def _get_local(param: torch.nn.Parameter, key: str) -> torch.Tensor:
    """ZeRO-3's padded partition of `param`'s fp32 weight or Adam moment `key`."""
    if key == STATES[0]:
        return safe_get_local_fp32_param(param)
    return safe_get_local_optimizer_state(param, key)


class _PiecesSavePlanner(DefaultSavePlanner):
    """DCP's default planner, writing each Pieces entry as its rectangles of the one-process tensor."""

    def __init__(self):
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)

    def create_local_plan(self) -> SavePlan:
        items = []
        for fqn, pieces in self.state_dict.items():
            properties = TensorProperties(dtype=pieces.flat.dtype)
            items += [WriteItem(index=MetadataIndex(fqn, chunk.offsets), type=WriteItemType.SHARD,
                                tensor_data=TensorWriteData(chunk, properties, pieces.shape))
                      for chunk in pieces.chunks()]
        self.plan = SavePlan(items)
        return self.plan

    def resolve_data(self, write_item: WriteItem) -> torch.Tensor:
        return self.state_dict[write_item.index.fqn].rectangles[tuple(write_item.index.offset)]


class _PiecesLoadPlanner(DefaultLoadPlanner):
    """DCP's default planner, reading into each Pieces entry the parts of the saved pieces that
    overlap its rectangles (and nothing else)."""

    def __init__(self):
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)

    def set_up_planner(self, state_dict: dict[str, Pieces], metadata: Any = None,
                       is_coordinator: bool = False) -> None:
        # The default's set-up deep-copies values it does not know (Pieces): they must stay views.
        self.state_dict = self.original_state_dict = state_dict
        self.metadata, self.is_coordinator = metadata, is_coordinator

    def create_local_plan(self) -> LoadPlan:
        saved = self.metadata.state_dict_metadata
        items: list[ReadItem] = []
        for fqn, pieces in self.state_dict.items():
            md = saved.get(fqn)
            if md is None or tuple(md.size) != tuple(pieces.shape):
                got = "nothing" if md is None else f"shape {tuple(md.size)}"
                raise CheckpointError(f"the checkpoint holds {got} for {fqn}, this model has shape "
                                      f"{tuple(pieces.shape)}: resume with the model it was saved with")
            items += create_read_items_for_chunk_list(fqn, md, pieces.chunks())
        return LoadPlan(items)

    def resolve_tensor(self, read_item: ReadItem) -> torch.Tensor:
        index = read_item.dest_index
        rectangle = self.state_dict[index.fqn].rectangles[tuple(index.offset)]
        return self.transform_tensor(read_item, rectangle)  # the part of it this read fills


def _trainer_state(engine: deepspeed.DeepSpeedEngine, client_state: dict[str, Any]) -> dict[str, Any]:
    return {"adam_step": _adam_step(engine), "global_steps": engine.global_steps,
            "global_samples": engine.global_samples, "lr_scheduler": engine.lr_scheduler.state_dict(),
            "client_state": client_state}


def _link_adam_state(engine: deepspeed.DeepSpeedEngine) -> None:
    """Make Adam's state exist for every flat fp32 partition and DeepSpeed's per-parameter views of
    it point there. torch's AdamW creates its state at the first step (a run resumed under another
    layout has not stepped yet), and DeepSpeed 0.19's ZeRO-1/2 links the views once, inside the
    first param group's first step, when the second group (biases, LayerNorms) has no state yet."""
    zero = engine.optimizer
    # ZeRO-3 steps its fp32 partitions by swapping them into the param groups one at a time.
    flats = [p for group in zero.optimizer.param_groups for p in group["params"]]
    for flat in flats + list(getattr(zero, "fp32_partitioned_groups_flat", [])):
        state = zero.optimizer.state[flat]
        if not state:
            state.update(step=torch.zeros(()), exp_avg=torch.zeros_like(flat),
                         exp_avg_sq=torch.zeros_like(flat))
    if hasattr(zero, "_lazy_init_hp_params_optimizer_state"):  # ZeRO-1/2 (ZeRO-3 looks states up)
        zero._hp_optimizer_states_linked = False
        zero._lazy_init_hp_params_optimizer_state()


def _adam_step(engine: deepspeed.DeepSpeedEngine) -> float:
    steps = {float(state["step"]) for state in engine.optimizer.optimizer.state.values()}
    if len(steps) != 1:
        raise RuntimeError(f"Adam's step counts differ between parameter groups: {sorted(steps)}")
    return steps.pop()


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


@contextmanager
def replacing_folder(out: Path, force: bool = False) -> Iterator[Path]:
    """A temporary sibling of `out` to write into; on success it takes `out`'s place, on failure it
    is removed and `out` is as it was. A non-empty `out` is refused unless `force`.

    The swap is two renames (old aside, new in): a crash between them leaves both folders on disk,
    the old one as .NAME.old-PID, never a half-written `out`."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out} is a file, not a folder: choose another output folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise CheckpointError(f"{out} is not empty: choose a new folder, or pass --force to replace it "
                              "(the new one is written beside it and swapped in only when complete)")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Named by process, made with the umask's permissions (tempfile's would make the result 0700).
    tmp, old = (out.with_name(f".{out.name}.{kind}-{os.getpid()}") for kind in ("tmp", "old"))
    for stale in (tmp, old):  # left by a process of the same id that crashed
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replaced = out.exists()
    if replaced:
        os.replace(out, old)
    os.replace(tmp, out)
    if replaced:
        shutil.rmtree(old)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())  # on disk before it is renamed in: never an empty `latest` after a crash
    os.replace(tmp, path)
