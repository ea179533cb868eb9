"""Save and resume training through DeepSpeed's engine, published atomically.

A checkpoint is a folder `step00000050/` holding DeepSpeed's model, optimizer and scheduler state
(sharded by ZeRO), the data position, and every rank's RNG state. It is written as
`step00000050.tmp/` and renamed only once all ranks have finished, and `latest` is replaced
atomically after that: a crash while saving leaves the previous checkpoint in charge, and the next
save removes the partial `.tmp` folder. Only the newest `keep_last` published checkpoints stay, plus
the one the run resumed from.

Every checkpoint is self-describing: `model_config.json` and the tokenizer's file(s) sit beside the
shards, so evaluation, generation, fine-tuning and export need nothing but the folder. A *model
folder* (written by `megagpt.convert from-hf` and `megagpt.finetune`) has the same two plus one
`model.safetensors`; everything that reads a model accepts either.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
import yaml
from deepspeed.accelerator import get_accelerator
from safetensors.torch import load_file, save_file

from megagpt.config import ModelConfig
from megagpt.model import GPT
from megagpt.tokenizer import AnyTokenizer, load_tokenizer

LATEST = "latest"
TAG = re.compile(r"step(\d{8})")
MODEL_CONFIG = "model_config.json"
WEIGHTS = "model.safetensors"


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def save(engine: deepspeed.DeepSpeedEngine, folder: Path, step: int, client_state: dict[str, Any],
         model_config: ModelConfig, tokenizer: AnyTokenizer, keep_last: int = 0,
         keep: Path | None = None) -> Path:
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
    if rank == 0:
        write_description(folder / tmp_tag, model_config, tokenizer)
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
    """The full fp32 model state of a checkpoint folder (ZeRO stage 0-3 shards, pp=1 / tp=1 layout)
    or of a model folder, keyed like GPT.state_dict()."""
    folder = resolve(checkpoint_folder)
    if (folder / WEIGHTS).is_file():
        state = load_file(str(folder / WEIGHTS))
    elif any(folder.glob("*_model_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        # DeepSpeed's own reader; it loads its shards with weights_only=False (they hold its
        # optimizer objects), so only consolidate checkpoints you trust.
        state = get_fp32_state_dict_from_zero_checkpoint(str(folder.parent), tag=folder.name)
    else:
        raise FileNotFoundError(
            f"{folder} holds neither {WEIGHTS} nor DeepSpeed *_model_states.pt shards: pass a "
            "checkpoint folder (stepNNNNNNNN), a checkpoints/ or run folder with `latest`, or a model folder"
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
    model.load_state_dict(consolidated_state_dict(checkpoint_folder))
    return model.to(device).eval(), find_tokenizer(checkpoint_folder), device


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
