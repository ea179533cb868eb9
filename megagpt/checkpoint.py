"""Save and resume training through DeepSpeed's engine, published atomically, portable across layouts.

A checkpoint is a folder `step00000050/` holding DeepSpeed's model, optimizer and scheduler state
(sharded by ZeRO, tp and pp), the data position, every rank's RNG state, `layout.json`, and
`portable/stage00.pt`, ...: per pipeline stage the whole fp32 weights and Adam moments under the
one-process model's names, assembled over dp (ZeRO) and tp. Resuming under the same layout reads
DeepSpeed's files (exact); under another layout it reads the portable files and cuts them for the
new layout (DeepSpeed's universal checkpoint and torchtitan's DCP resharding do the same). It is written as
`step00000050.tmp/` and renamed only once all ranks have finished, and `latest` is replaced
atomically after that: a crash while saving leaves the previous checkpoint in charge, and the next
save removes the partial `.tmp` folder. Only the newest `keep_last` published checkpoints stay, plus
the one the run resumed from and the one `latest` names.

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

import dataclasses
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
import xxhash
import yaml
from deepspeed.accelerator import get_accelerator
from deepspeed.utils import (
    safe_get_full_fp32_param,
    safe_get_full_optimizer_state,
    safe_set_full_optimizer_state,
)
from safetensors.torch import load_file, save_file

from megagpt.config import ModelConfig
from megagpt.model import GPT
from megagpt.parallel.pipeline import PipelineGPT
from megagpt.parallel.tensor import gather_split, take_split
from megagpt.parallel.topology import Layout, Topology
from megagpt.tokenizer import AnyTokenizer, load_tokenizer

LATEST = "latest"
TAG = re.compile(r"step(\d{8})")
MODEL_CONFIG = "model_config.json"
WEIGHTS = "model.safetensors"
PORTABLE = "portable"
MOMENTS = ("exp_avg", "exp_avg_sq")  # Adam's state besides the step count
CHECKSUMS = "checksums.json"


class CheckpointError(ValueError):
    """A checkpoint or model folder that cannot be used as asked; the message names the file and the fix."""


class DamagedCheckpoint(CheckpointError):
    """A file of a checkpoint is missing, truncated or altered since it was saved."""


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def save(engine: deepspeed.DeepSpeedEngine, topo: Topology, folder: Path, step: int,
         client_state: dict[str, Any], model_config: ModelConfig, tokenizer: AnyTokenizer,
         keep_last: int = 0, keep: Path | None = None) -> Path:
    """Write the checkpoint of `step` on all ranks; returns its published folder.

    Afterwards only the newest `keep_last` published checkpoints remain (0 keeps all), and neither
    `keep` (the checkpoint the run resumed from) nor the one just written is deleted.
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
    _save_portable(engine, topo, folder / tmp_tag, client_state)
    if rank == 0:
        write_description(folder / tmp_tag, model_config, tokenizer)
    dist.barrier()
    write_checksums(folder / tmp_tag, rank, dist.get_world_size())
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


def write_checksums(path: Path, rank: int = 0, world: int = 1) -> None:
    """Record size and xxh3-128 hash of every file under `path` in checksums.json. With world > 1 a
    collective: each rank hashes a share of the files (reading back what was just written, from
    the page cache) and rank 0 writes the merged list."""
    names = _files(path)
    mine = {name: _digest(path / name) for name in names[rank::world]}
    shares = [mine]
    if world > 1:
        shares = [None] * world
        dist.all_gather_object(shares, mine)
    if rank == 0:
        merged = {name: entry for share in shares for name, entry in share.items()}
        (path / CHECKSUMS).write_text(json.dumps(dict(sorted(merged.items())), indent=1) + "\n")


def verify(path: Path, names: list[str] | None = None, rank: int = 0, world: int = 1) -> None:
    """Raise DamagedCheckpoint naming the first file of `path` (of `names`, when given) that is
    missing or differs from checksums.json, and the checkpoint to use instead. Folders written before
    checksums existed pass unchecked. With world > 1 a collective: each rank checks a share and all
    raise the same error."""
    record = path / CHECKSUMS
    if not record.is_file():
        return
    try:
        expected = json.loads(record.read_text())
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


def saved_layout(path: Path) -> Layout | None:
    """The layout that wrote the checkpoint `path` (None for one written before layouts were recorded)."""
    file = path / "layout.json"
    return Layout(**json.loads(file.read_text())) if file.is_file() else None


def load(engine: deepspeed.DeepSpeedEngine, topo: Topology, path: Path) -> dict[str, Any]:
    """Restore engine state and the RNG from `path`; returns the saved client state.

    Under the layout that wrote it, DeepSpeed's own files are read. Under another, the portable
    files: weights, Adam moments and step, lr schedule and step count; the RNG of rank 0 (dropout
    streams cannot follow a change of layout anyway)."""
    if saved_layout(path) in (None, topo.layout):
        load_path, client_state = engine.load_checkpoint(str(path.parent), tag=path.name)
        if load_path is None:
            raise FileNotFoundError(f"DeepSpeed found no checkpoint in {path}")
        rng_file = path / f"rng_rank{dist.get_rank():05d}.pt"
    else:
        client_state = _load_portable(engine, topo, path)
        rng_file = path / f"rng_rank{0:05d}.pt"
    _set_rng_state(torch.load(rng_file, weights_only=True))
    return client_state


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
    """The full fp32 model state of a checkpoint folder, whatever layout wrote it (its portable/
    files), or of a model folder, keyed like GPT.state_dict() (lm_head.weight is the tied wte)."""
    folder = resolve(checkpoint_folder)
    if (folder / WEIGHTS).is_file():
        verify(folder, [WEIGHTS])
        state = load_file(str(folder / WEIGHTS))
    elif (folder / PORTABLE).is_dir():
        verify(folder, [str(f.relative_to(folder)) for f in _portable_files(folder)])
        state = {name: states["param"] for name, states in _read_portable(folder)[0].items()}
    else:
        raise FileNotFoundError(
            f"{folder} holds neither {WEIGHTS} nor {PORTABLE}/: pass a checkpoint folder "
            "(stepNNNNNNNN), a checkpoints/ or run folder with `latest`, or a model folder"
        )
    state = {k: v.float() for k, v in state.items()}
    state.setdefault("lm_head.weight", state["transformer.wte.weight"])  # tied
    return state


def read_model_config(checkpoint_folder: str | Path) -> ModelConfig:
    """The ModelConfig of a checkpoint: its model_config.json, or for checkpoints written before
    those existed, the model section of the run's config.yaml two folders up."""
    folder = resolve(checkpoint_folder)
    if (folder / MODEL_CONFIG).is_file():
        return ModelConfig(**json.loads((folder / MODEL_CONFIG).read_text()))
    run_config = folder.parent.parent / "config.yaml"
    if run_config.is_file():
        return ModelConfig(**yaml.safe_load(run_config.read_text())["model"])
    raise FileNotFoundError(f"{folder} has no {MODEL_CONFIG} (and no run config.yaml beside its "
                            "checkpoints/): write one with the model's shape, as megagpt.config.ModelConfig")


def find_tokenizer(checkpoint_folder: str | Path) -> AnyTokenizer:
    """The tokenizer saved in a checkpoint, or for older checkpoints the one its run's data used."""
    folder = resolve(checkpoint_folder)
    try:
        return load_tokenizer(folder)
    except FileNotFoundError:
        run_config = folder.parent.parent / "config.yaml"
        if not run_config.is_file():
            raise
        data = Path(yaml.safe_load(run_config.read_text())["data"]["path"])  # as the run saw it
        manifest = json.loads((data / "manifest.json").read_text())
        return load_tokenizer(data, manifest["tokenizer"]["file"])


def load_pretrained(checkpoint_folder: str | Path, device: torch.device | str | None = None
                    ) -> tuple[GPT, AnyTokenizer, torch.device]:
    """The model (eval mode, on the accelerator unless `device` says otherwise), its tokenizer and
    the device, from any checkpoint or model folder."""
    device = torch.device(device or get_accelerator().device_name())
    model = GPT(read_model_config(checkpoint_folder))
    state = consolidated_state_dict(checkpoint_folder)
    _check_weights_fit(model, state, resolve(checkpoint_folder))
    model.load_state_dict(state)
    return model.to(device).eval(), find_tokenizer(checkpoint_folder), device


def _check_weights_fit(model: GPT, state: dict[str, torch.Tensor], folder: Path) -> None:
    """Refuse weights whose names or shapes are not those model_config.json describes, naming both."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    got = {name: tuple(t.shape) for name, t in state.items()}
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
    """This rank's parameters with their one-process names, in the same order on every rank of a
    dp or tp group (the collectives below rely on it)."""
    module = engine.module
    for name, param in module.named_parameters():
        yield (module.serial_name(name) if isinstance(module, PipelineGPT) else name), param


def _save_portable(engine: deepspeed.DeepSpeedEngine, topo: Topology, path: Path,
                   client_state: dict[str, Any]) -> None:
    _link_adam_state(engine)
    states: dict[str, dict[str, torch.Tensor]] = {}
    for name, param in _local_parameters(engine):
        # Collective over dp (ZeRO shards), then over tp (slices): every rank takes part.
        full = {"param": safe_get_full_fp32_param(param)}
        full.update({key: safe_get_full_optimizer_state(param, key) for key in MOMENTS})
        if any(value is None for value in full.values()):
            raise RuntimeError(f"{name}: no ZeRO fp32 state to save; megagpt runs ZeRO stages 1-3")
        split = getattr(param, "tp_split", None)
        if split is not None:
            full = {key: gather_split(value, split, topo.tp_group) for key, value in full.items()}
        states[name] = {key: value.detach().cpu() for key, value in full.items()}
    if topo.dp_rank == 0 and topo.tp_rank == 0:
        (path / PORTABLE).mkdir(exist_ok=True)
        extra = {"step": _adam_step(engine), "global_steps": engine.global_steps,
                 "global_samples": engine.global_samples,
                 "lr_scheduler": engine.lr_scheduler.state_dict(), "client_state": client_state}
        torch.save({"states": states, **extra}, path / PORTABLE / f"stage{topo.pp_rank:02d}.pt")
    if dist.get_rank() == 0:
        (path / "layout.json").write_text(json.dumps(topo.layout.__dict__))


def _portable_files(path: Path) -> list[Path]:
    return sorted((path / PORTABLE).glob("stage*.pt"))


def _read_portable(path: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    files = _portable_files(path)
    if not files:
        raise FileNotFoundError(f"{path / PORTABLE} holds no stage files: not a megagpt checkpoint folder")
    states: dict[str, dict[str, torch.Tensor]] = {}
    for file in files:  # the tied embedding is in the first and the last stage, equal in both
        saved = torch.load(file, weights_only=True, mmap=True)
        states.update(saved.pop("states"))
    return states, saved


def _load_portable(engine: deepspeed.DeepSpeedEngine, topo: Topology, path: Path) -> dict[str, Any]:
    states, saved = _read_portable(path)
    _link_adam_state(engine)
    for name, param in _local_parameters(engine):
        if name not in states:
            raise KeyError(f"{path}: no weights for {name}; was it written for another model shape?")
        full = states[name]
        split = getattr(param, "tp_split", None)
        if split is not None:
            full = {key: take_split(value, split, topo.tp_group) for key, value in full.items()}
        _set_weight(param, full["param"].to(param.device), topo)
        for key in MOMENTS:
            safe_set_full_optimizer_state(param, full[key].to(param.device), key)
    engine.optimizer.refresh_fp32_params()  # the optimizer's fp32 master copy from the weights set
    for state in engine.optimizer.optimizer.state.values():
        state["step"].fill_(saved["step"])
    engine.lr_scheduler.load_state_dict(saved["lr_scheduler"])
    # load_state_dict restores the schedule's position but leaves the optimizer at the first rate.
    for group, lr in zip(engine.lr_scheduler.optimizer.param_groups, engine.lr_scheduler.get_last_lr()):
        group["lr"] = lr
    engine.global_steps = saved["global_steps"]
    engine.global_samples = saved["global_samples"]
    return saved["client_state"]


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


def _set_weight(param: torch.nn.Parameter, value: torch.Tensor, topo: Topology) -> None:
    if hasattr(param, "ds_tensor"):  # ZeRO-3: this dp rank's flat slice of the (padded) parameter
        size = param.ds_tensor.ds_numel
        start = size * topo.dp_rank
        flat = value.flatten()[start:start + size]
        param.ds_tensor.data[: flat.numel()].copy_(flat)
    else:
        param.data.copy_(value)


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
