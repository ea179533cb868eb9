"""What a training run checks before any compute, so that it fails in seconds, not at the first save.

Both folders writable; every eval task's file there; the validation shards tokenized like the
training shards; the checkpoint to resume from intact (train.resume=auto falls back to the one
before a damaged one) and of this model's shape and tokenizer; and no other run's checkpoints in
checkpoint.dir for a fresh start.
Each check raises the same error on every rank (same config and files, or decided collectively).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch.distributed as dist

from megagpt import checkpoint
from megagpt.checkpoint import DamagedCheckpoint
from megagpt.config import EVAL_DATA, EVAL_DEFAULT_FILES, ConfigError, ModelConfig, RunConfig
from megagpt.parallel.layout import Layout
from megagpt.sizing.host_memory import offload_bytes
from megagpt.training.data import MixtureDataset, ShardDataset
from megagpt.training.offload import offload_folder

log = logging.getLogger("megagpt.train")


def check_data(cfg: RunConfig, train_data: ShardDataset, valid_data: ShardDataset | None) -> None:
    if train_data.vocab_size > cfg.model.vocab_size:
        raise ConfigError(
            f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's "
            f"{train_data.vocab_size} ({cfg.data.path}/manifest.json): set "
            f"model.vocab_size={train_data.vocab_size}"
        )
    if valid_data is not None and valid_data.tokenizer_sha256 != train_data.tokenizer_sha256:
        raise ConfigError(
            f"data.valid_path={cfg.data.valid_path} was tokenized with another tokenizer than "
            f"data.path={cfg.data.path}; build both with the same tokenizer"
        )


def check_writable(cfg: RunConfig) -> None:
    """Refuse a log.dir or checkpoint.dir that cannot be written, before any compute rather than at
    the first save. Collective: a failure on any rank is raised on all, none is left waiting."""
    problems = []
    for key, folder in (("log.dir", Path(cfg.log.dir)), ("checkpoint.dir", cfg.checkpoint_dir)):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
                pass
        except OSError as e:
            problems.append(f"{key}={folder} is not writable ({e.strerror or e}): choose a folder you "
                            "can write to, or fix its permissions")
    _refuse_on_all_ranks(problems)


def check_eval_tasks(cfg: RunConfig) -> None:
    """Refuse an eval.tasks entry whose file (its own, or the bundled default) is not there: found at
    the final evaluation it would end the run after all its steps. Collective, like check_writable."""
    problems = []
    for task in cfg.eval.tasks:
        name, _, path = task.partition(":")
        file = Path(path) if path else EVAL_DEFAULT_FILES[name]
        if not file.is_file():
            what = "no such file" if not file.exists() else "not a file"
            fix = (f"give a JSONL file that exists ({name}:FILE)" if path else
                   f"the bundled {name} test set is missing: restore {EVAL_DATA} from the repository")
            problems.append(f"eval.tasks entry {task!r}: {file} is {what}: {fix}, or remove the entry")
    _refuse_on_all_ranks(problems)


def _refuse_on_all_ranks(problems: list[str]) -> None:
    """Raise ConfigError on every rank if any rank found a problem (a collective)."""
    shares: list[list[str] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(shares, problems)
    problems = list(dict.fromkeys(p for share in shares for p in share))  # once, not once a rank
    if problems:
        raise ConfigError("; ".join(problems))


def resolve_resume(cfg: RunConfig) -> Path | None:
    """The intact checkpoint to resume from (None to start afresh), or an error saying why not."""
    mode, folder = cfg.train.resume, cfg.checkpoint_dir
    if mode == "auto":
        path = checkpoint.latest(folder)
    elif mode == "never":
        path = None
    else:
        path = Path(mode)
        if not path.is_dir():
            raise ConfigError(f"train.resume={mode}: no such checkpoint folder (or use 'auto' / 'never')")
    found = checkpoint.published(folder)
    if found and (path is None or path.resolve().parent != folder.resolve()):
        # Its checkpoints would interleave with this run's, and keep_last, pruning by step number,
        # would delete whichever run's are older.
        resume = (f"write the name of the one to continue from into {folder / checkpoint.LATEST}"
                  if mode == "auto" else "continue that run with train.resume=auto")
        raise ConfigError(
            f"checkpoint.dir={folder} already holds another run's checkpoints ({found[0].name} to "
            f"{found[-1].name}); train.resume={mode} would mix this run's with them: {resume}, or start "
            "this one in a new log.dir (or checkpoint.dir)"
        )
    return path if path is None else verified(path, fallback=mode == "auto")


def verified(path: Path, fallback: bool) -> Path:
    """`path` if all its files match their checksums, else (with `fallback`) the newest earlier
    checkpoint that does, with a warning."""
    while True:
        try:
            checkpoint.verify(path, rank=dist.get_rank(), world=dist.get_world_size())
            return path
        except DamagedCheckpoint as e:
            before = checkpoint.previous(path)
            if not fallback or before is None:
                raise
            log.warning("%s. Falling back to %s (train.resume=auto)", e, before)
            path = before


def check_resumable(cfg: RunConfig, path: Path, train_data: ShardDataset | MixtureDataset) -> None:
    """Refuse a checkpoint of another model shape or tokenizer than this run's, naming both."""
    saved = checkpoint.read_model_config(path)
    # Dropout changes no tensor, so it may differ; every other field shapes the weights.
    differ = [f.name for f in dataclasses.fields(ModelConfig)
              if f.name != "dropout" and getattr(saved, f.name) != getattr(cfg.model, f.name)]
    if differ:
        raise ConfigError(
            f"{path} was saved with {', '.join(f'model.{k}={getattr(saved, k)}' for k in differ)} but "
            f"this run has {', '.join(f'model.{k}={getattr(cfg.model, k)}' for k in differ)}: resume "
            "with the checkpoint's model settings, or start a new run in another log.dir"
        )
    saved_tokenizer = checkpoint.find_tokenizer(path)
    if saved_tokenizer.sha256 != train_data.tokenizer_sha256:
        raise ConfigError(
            f"{path} was trained with another tokenizer ({saved_tokenizer.path}) than {cfg.data.path} "
            "was built with: resume on the data it was trained on, or start a new run in another log.dir"
        )


def check_offload(cfg: RunConfig, layout: Layout, on_gpu: bool) -> None:
    """Refuse, before any compute, an offload choice whose host memory or offload-folder space this
    node does not have, naming both figures and what would fit (megagpt.sizing.host_memory).
    Each node's ranks share its memory and its node-local folder. Collective: the same error on all."""
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size()))
    need = offload_bytes(cfg.model, layout, on_gpu)
    problems = []
    if layout.offloads():
        have = host_memory_bytes()
        if need.host * per_node > have:
            problems.append(
                f"the layout ({layout}) needs about {need.host * per_node / 2**30:.1f} GiB of host memory on "
                f"this node ({per_node} rank(s) x {need.host / 2**30:.1f} GiB) and it has "
                f"{have / 2**30:.1f} GiB available: {_what_fits(cfg, layout, on_gpu, have / per_node)}")
    if need.disk:
        folder = offload_folder(cfg)
        folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(folder).free
        if need.disk * per_node > free:
            problems.append(
                f"parallel.offload_path={folder} has {free / 1e9:.1f} GB free and the offload needs "
                f"{need.disk * per_node / 1e9:.1f} GB ({per_node} rank(s) x {need.disk / 1e9:.1f} GB): "
                "point parallel.offload_path at a larger (node-local NVMe) folder, or offload less "
                "(parallel.offload_params=cpu or none), or use more ranks")
    shares: list[list[str] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(shares, problems)
    problems = list(dict.fromkeys(p for share in shares for p in share))
    if problems:
        raise ConfigError("; ".join(problems))


def host_memory_bytes() -> float:
    """What this node's processes can still take: MemAvailable, or the cgroup's limit if lower."""
    available = float("inf")
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            available = min(available, int(limit))
    except OSError:
        pass
    return available


def _what_fits(cfg: RunConfig, layout: Layout, on_gpu: bool, budget: float) -> str:
    """The offload choices, least offloaded first, whose host memory fits `budget` bytes a rank."""
    fits = []
    for optimizer, params in (("cpu", "none"), ("nvme", "none"), ("cpu", "nvme"), ("nvme", "nvme")):
        choice = dataclasses.replace(layout, zero_stage=3, offload_optimizer=optimizer, offload_params=params)
        if offload_bytes(cfg.model, choice, on_gpu).host <= budget:
            fits.append(f"parallel.offload_optimizer={optimizer} parallel.offload_params={params}")
    if fits:
        return "this fits: " + fits[0]
    return "no offload choice fits one rank here: use more nodes (dp) or tensor parallelism (parallel.tp)"
