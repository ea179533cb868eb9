"""Fill `ds_config.json`'s "auto" values from the run config, so one file serves every run.

A value written out in ds_config.json must agree with the run config; a disagreement is refused
rather than resolved silently, because two sources of truth for the batch size is how runs drift.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from megagpt.config import ConfigError, RunConfig


def build_ds_config(
    path: str | Path, run: RunConfig, dp_size: int, zero_stage: int, on_gpu: bool
) -> tuple[dict[str, Any], list[str]]:
    """The DeepSpeed config for this run, and one line per "auto" value it filled."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"parallel.ds_config={path} not found; the repository root has ds_config.json")
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from None
    if "scheduler" in ds:
        raise ConfigError(
            f"{path} sets a scheduler; megagpt schedules the lr from train.lr / warmup_steps / "
            "min_lr_ratio (linear warmup, cosine decay): remove the scheduler block"
        )
    t = run.train
    wanted = {
        "train_micro_batch_size_per_gpu": (t.micro_batch_size, "train.micro_batch_size"),
        "gradient_accumulation_steps": (t.grad_accum, "train.grad_accum"),
        "train_batch_size": (t.micro_batch_size * t.grad_accum * dp_size, "micro x accum x dp"),
        "gradient_clipping": (t.grad_clip, "train.grad_clip"),
        "optimizer.params.lr": (t.lr, "train.lr"),
        "optimizer.params.weight_decay": (t.weight_decay, "train.weight_decay"),
        # On a CPU torch's AdamW avoids a 78 s JIT build of DeepSpeed's fused op for no gain.
        "optimizer.params.torch_adam": (not on_gpu, "accelerator is CPU" if not on_gpu else "GPU"),
        "zero_optimization.stage": (zero_stage, f"parallel.zero_stage={run.parallel.zero_stage}"),
        "bf16.enabled": (on_gpu, "accelerator has bf16" if on_gpu else "CPU: fp32"),
    }
    filled = []
    for dotted, (value, source) in wanted.items():
        *parents, leaf = dotted.split(".")
        node = ds
        for key in parents:
            node = node.setdefault(key, {})
        current = node.get(leaf, "auto")
        if current == "auto":
            node[leaf] = value
            filled.append(f"{dotted}={value} ({source})")
        elif current != value:
            raise ConfigError(
                f"{path} sets {dotted}={current!r} but the run wants {value!r} from {source}; "
                f'set it to "auto" in {path.name} or change {source}'
            )
    return ds, filled
