"""Model folders and reading weights out of checkpoints: what evaluation, generation, fine-tuning
and export load.

Every reader checks what it reads against checksums.json first, the description as much as the
weights: an edited model_config.json or a tokenizer swapped for another valid one would otherwise
load and run, silently wrong."""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from deepspeed.accelerator import get_accelerator
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import (
    TensorStorageMetadata,
)

from megagpt.checkpoint.folders import CheckpointError, resolve
from megagpt.checkpoint.integrity import verify, write_checksums
from megagpt.checkpoint.zero_states import STATES
from megagpt.config import ModelConfig
from megagpt.formats.tokenizer import GPT2_FILES, SENTENCEPIECE_FILE, AnyTokenizer, load_tokenizer
from megagpt.model.gpt import GPT

MODEL_CONFIG = "model_config.json"
WEIGHTS = "model.safetensors"
METADATA = ".metadata"  # DCP's: which piece of which parameter is where
TOKENIZER_FILES = (SENTENCEPIECE_FILE, *GPT2_FILES, "vocab.json", "merges.txt")  # whichever are there


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


def consolidated_state_dict(checkpoint_folder: str | Path) -> dict[str, torch.Tensor]:
    """The full fp32 model state of a checkpoint folder, whatever layout wrote it, or of a model
    folder, keyed like GPT.state_dict() (lm_head.weight is the tied wte). One copy: each parameter
    is read from its pieces straight into its own tensor."""
    folder = resolve(checkpoint_folder)
    if (folder / WEIGHTS).is_file():
        verify(folder)  # every file checksums.json lists: weights, model_config.json, tokenizer
        state = {k: v.float() for k, v in load_file(str(folder / WEIGHTS)).items()}
    elif (folder / METADATA).is_file():
        verify(folder)
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


def _read_weights(folder: Path, state: dict[str, torch.Tensor]) -> None:
    """Fill `state` (one-process names -> tensors of the full shape) from a checkpoint's fp32
    weights, in this process alone (no process group needed)."""
    with warnings.catch_warnings():  # DCP warns that it reads in one process: that is the point here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load({f"{STATES[0]}.{name}": tensor for name, tensor in state.items()},
                 storage_reader=dcp.FileSystemReader(folder), planner=DefaultLoadPlanner(), no_dist=True)


def read_model_config(checkpoint_folder: str | Path) -> ModelConfig:
    """The ModelConfig of a checkpoint or model folder: its model_config.json, checked against
    checksums.json."""
    folder = resolve(checkpoint_folder)
    if not (folder / MODEL_CONFIG).is_file():
        raise FileNotFoundError(f"{folder} has no {MODEL_CONFIG}: pass a checkpoint or model folder "
                                "megagpt wrote (they all describe their model)")
    verify(folder, [MODEL_CONFIG])
    return ModelConfig(**json.loads((folder / MODEL_CONFIG).read_text()))


def find_tokenizer(checkpoint_folder: str | Path) -> AnyTokenizer:
    """The tokenizer saved in a checkpoint or model folder, its file(s) checked against checksums.json."""
    folder = resolve(checkpoint_folder)
    verify(folder, [name for name in TOKENIZER_FILES if (folder / name).is_file()])
    return load_tokenizer(folder)


def load_pretrained(checkpoint_folder: str | Path, device: torch.device | str | None = None
                    ) -> tuple[GPT, AnyTokenizer, torch.device]:
    """The model (eval mode, on the accelerator unless `device` says otherwise), its tokenizer and
    the device, from any checkpoint or model folder. Checkpoint weights are read straight into the
    model's own tensors, parameter by parameter, never held twice."""
    device = torch.device(device or get_accelerator().device_name())
    folder = resolve(checkpoint_folder)
    model = GPT(read_model_config(folder))
    if (folder / METADATA).is_file():
        verify(folder)  # every file checksums.json lists: weights, model_config.json, tokenizer
        metadata = dcp.FileSystemReader(folder).read_metadata().state_dict_metadata
        saved = {fqn.removeprefix(f"{STATES[0]}."): tuple(md.size) for fqn, md in metadata.items()
                 if fqn.startswith(f"{STATES[0]}.") and isinstance(md, TensorStorageMetadata)}
        _check_weights_fit(model, saved, folder)
        own = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied to wte
        _read_weights(folder, own)
    else:
        state = consolidated_state_dict(folder)  # verifies every file
        _check_weights_fit(model, {k: tuple(v.shape) for k, v in state.items() if k != "lm_head.weight"},
                           folder)
        model.load_state_dict(state)
    return model.to(device).eval(), load_tokenizer(folder), device


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
