"""Fill `ds_config.json`'s "auto" values from the run, so one file serves every entry point.

A value written out in ds_config.json must agree with what the run asks for; a disagreement is
refused rather than resolved silently, because two sources of truth for the batch size is how runs
drift. Defaults (Adam's betas, the clipping of a fine-tuning run) fill only what the file leaves
"auto": a value written there wins.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from megagpt.config import ConfigError, RunConfig, uses_bf16

# dotted key -> (value, where it comes from: named in messages)
Wanted = dict[str, tuple[Any, str]]

REPOSITORY_DS_CONFIG = Path(__file__).resolve().parents[2] / "ds_config.json"
PRETRAINING_BETAS = [0.9, 0.95]  # GPT-3 (Brown et al. 2020, appendix B), nanoGPT


def training_values(run: RunConfig, dp_size: int, zero_stage: int, on_gpu: bool) -> Wanted:
    """What a pre-training run asks of the engine, from its config and layout."""
    t = run.train
    return {
        "train_micro_batch_size_per_gpu": (t.micro_batch_size, "train.micro_batch_size"),
        "gradient_accumulation_steps": (t.grad_accum, "train.grad_accum"),
        "train_batch_size": (t.micro_batch_size * t.grad_accum * dp_size, "micro x accum x dp"),
        "gradient_clipping": (t.grad_clip, "train.grad_clip"),
        "optimizer.params.lr": (t.lr, "train.lr"),
        "optimizer.params.weight_decay": (t.weight_decay, "train.weight_decay"),
        "zero_optimization.stage": (zero_stage, f"parallel.zero_stage={run.parallel.zero_stage}"),
        # About one GPT-2 XL Block: the next Block's gather overlaps the current Block's compute.
        "zero_optimization.stage3_prefetch_bucket_size": (int(5e7), "one GPT-2 XL Block"),
        **device_values(on_gpu, t.precision, f"train.precision={t.precision}"),
    }


def device_values(on_gpu: bool, precision: str, precision_source: str) -> Wanted:
    """The optimizer implementation and precision for this device, `precision` as train.precision."""
    return {
        # On a CPU torch's AdamW avoids a 78 s JIT build of DeepSpeed's fused op for no gain.
        "optimizer.params.torch_adam": (not on_gpu, "accelerator is CPU" if not on_gpu else "GPU"),
        "bf16.enabled": (uses_bf16(precision, on_gpu), f"{precision_source}, {'GPU' if on_gpu else 'CPU'}"),
    }


def build_ds_config(path: str | Path, run: RunConfig, dp_size: int, zero_stage: int, on_gpu: bool,
                    offload: Wanted | None = None) -> tuple[dict[str, Any], list[str]]:
    """The DeepSpeed config of a pre-training run (with `offload`'s entries: megagpt.training.offload),
    and one line per "auto" value it filled."""
    defaults = {"optimizer.params.betas": (PRETRAINING_BETAS, "pre-training default")}
    return fill_ds_config(path, {**training_values(run, dp_size, zero_stage, on_gpu), **(offload or {})},
                          defaults)


def fill_ds_config(path: str | Path, wanted: Wanted, defaults: Wanted | None = None
                   ) -> tuple[dict[str, Any], list[str]]:
    """ds_config.json at `path` with its "auto" values filled from `wanted` (which the file must
    agree with where it names a value) and `defaults`; and one line per value filled."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"DeepSpeed config {path} not found; the repository root has ds_config.json")
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from None
    if "scheduler" in ds:
        raise ConfigError(
            f"{path} sets a scheduler; megagpt schedules the lr itself (train.lr / warmup_steps / "
            "min_lr_ratio: linear warmup, cosine decay): remove the scheduler block"
        )
    filled = []
    for values, must_agree in ((wanted, True), (defaults or {}, False)):
        for dotted, (value, source) in values.items():
            *parents, leaf = dotted.split(".")
            node = ds
            for key in parents:
                node = node.setdefault(key, {})
            current = node.get(leaf, "auto")
            if current == "auto":
                node[leaf] = value
                filled.append(f"{dotted}={value} ({source})")
            elif must_agree and current != value:
                raise ConfigError(
                    f"{path} sets {dotted}={current!r} but the run wants {value!r} from {source}; "
                    f'set it to "auto" in {path.name} or change {source}'
                )
    return ds, filled
