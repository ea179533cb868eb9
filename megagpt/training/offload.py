"""ZeRO-Offload and ZeRO-Infinity: where a ZeRO-3 run keeps its optimizer state and parameters when
the devices cannot hold them, and DeepSpeed's settings for it derived from the model and layout.

`parallel.offload_optimizer` moves the fp32 master weights, Adam's moments and the gradients they
step with to host memory (cpu) or to files (nvme), and DeepSpeed's CPU Adam steps them there;
`parallel.offload_params` moves the parameters the forward gathers. Sizes that a fixed constant
gets wrong on another model (docs/offload.md says how they were found):
- `sub_group_size`: the optimizer steps, and with nvme swaps, this many elements at a time; the host
  holds buffers for a few sub-groups (16 bytes an element: weight, gradient, two moments), so it is
  sized to a fraction of the rank's partition, not DeepSpeed's 1e9 (16 GB of buffers: an OOM).
- the parameter swap buffers (`buffer_size`, `buffer_count`): one buffer holds one parameter's
  partition, so a buffer is as large as the largest (the embedding), and there are enough for the
  parameters one module gathers at once plus the prefetched ones.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megagpt.config import ModelConfig, RunConfig
from megagpt.parallel.layout import Layout
from megagpt.sizing.parameters import stage_parameters

ALIGNMENT = 1 << 20  # DeepSpeed's swap alignment (aio block size) in elements, rounded up to it
SCRATCH_VARIABLES = ("SLURM_TMPDIR", "TMPDIR")  # node-local scratch on clusters


@dataclass(frozen=True)
class SwapSizes:
    """The sizes DeepSpeed's swappers need, in elements."""

    sub_group_size: int
    param_buffer_size: int
    param_buffer_count: int


def offload_folder(run: RunConfig) -> Path:
    """Where nvme offload writes: parallel.offload_path, else node-local scratch, else the run folder."""
    if run.parallel.offload_path:
        return Path(run.parallel.offload_path)
    for variable in SCRATCH_VARIABLES:
        if os.environ.get(variable):
            return Path(os.environ[variable]) / "megagpt-offload"
    return Path(run.log.dir) / "offload"


def swap_sizes(model: ModelConfig, layout: Layout) -> SwapSizes:
    """Sizes derived from the model: a rank's partition, its largest parameter, its module widths."""
    partition = stage_parameters(model, layout.pp, layout.tp) / layout.dp
    # Eight sub-groups a partition, between 1e7 (fewer make the per-sub-group overhead dominate)
    # and DeepSpeed's 1e9: GPT-2 XL on one rank steps 1.56e9 elements in 8 sub-groups of 2e8.
    sub_group = _round_up(int(min(1e9, max(1e7, partition / 8))), ALIGNMENT)
    largest = math.ceil(model.padded_vocab_size * model.n_embd / layout.tp / layout.dp)
    # A Block gathers at most its four matrices and their biases at once, the MLP's pair is the
    # widest; two Blocks in flight (the one computing and the one prefetched) plus the embeddings.
    count = 2 * 8 + 2
    return SwapSizes(sub_group, _round_up(largest, ALIGNMENT), count)


def offload_values(run: RunConfig, layout: Layout, on_gpu: bool) -> dict[str, tuple[Any, str]]:
    """ds_config.json's zero_optimization offload entries and aio section for the layout's offload
    choice, each with where it comes from (empty without offload)."""
    chosen = layout.offloads()
    if not chosen:
        return {}
    sizes = swap_sizes(run.model, layout)
    folder = str(offload_folder(run).resolve())
    sections: dict[str, Any] = {"zero_optimization.sub_group_size": sizes.sub_group_size}
    if "optimizer" in chosen:
        sections["optimizer.params.torch_adam"] = False  # DeepSpeed's vectorized CPU Adam steps them
        sections["zero_optimization.offload_optimizer"] = {
            "device": chosen["optimizer"], "nvme_path": folder, "pin_memory": on_gpu,
            # Read the next sub-group and write the last one while the current one steps.
            "pipeline_read": chosen["optimizer"] == "nvme", "pipeline_write": chosen["optimizer"] == "nvme",
            "buffer_count": 4, "fast_init": False,
        }
    if "params" in chosen:
        sections["zero_optimization.offload_param"] = {
            "device": chosen["params"], "nvme_path": folder, "pin_memory": on_gpu,
            "buffer_count": sizes.param_buffer_count, "buffer_size": sizes.param_buffer_size,
            "max_in_cpu": 0,
        }
    if "nvme" in chosen.values():
        sections["aio"] = {"block_size": 1 << 20, "queue_depth": 8, "intra_op_parallelism": 1,
                           "single_submit": False, "overlap_events": True}
    source = ", ".join(f"parallel.offload_{what}={where}" for what, where in chosen.items())
    return {key: (value, source) for key, value in sections.items()}


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
