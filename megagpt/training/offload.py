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
  matrices gathered at once (prefetch is off: see below).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

from megagpt.config import RunConfig
from megagpt.parallel.layout import Layout
from megagpt.sizing.host_memory import swap_sizes

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
SCRATCH_VARIABLES = ("SLURM_TMPDIR", "TMPDIR")  # node-local scratch on clusters


def offload_folder(run: RunConfig) -> Path:
    """Where nvme offload writes: parallel.offload_path, else node-local scratch, else the run folder."""
    if run.parallel.offload_path:
        return Path(run.parallel.offload_path)
    for variable in SCRATCH_VARIABLES:
        if os.environ.get(variable):
            return Path(os.environ[variable]) / "megagpt-offload"
    return Path(run.log.dir) / "offload"


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
            # One sub-group in memory at a time: its weight, two moments and gradient, a buffer each.
            # (Pipelining the reads and writes needs twice the buffers; measured in docs/offload.md.)
            "pipeline_read": False, "pipeline_write": False, "buffer_count": 4, "fast_init": False,
        }
    if chosen.get("params") == "nvme":
        # A gathered parameter that will be used again within this many elements of fetches stays
        # gathered, keeping its swap buffer: with DeepSpeed's 1e9 every Block's weights stay until
        # their backward and the buffers run out ("Not enough buffers 0 for swapping 1"). With 0
        # each is released after its module, and the prefetcher swaps in the next ones.
        sections["zero_optimization.stage3_max_reuse_distance"] = 0
        # DeepSpeed 0.19.8's NVMe prefetch takes every free swap buffer for the parameters next in
        # its trace without removing repeats, so the tied embedding (in the trace twice) is swapped
        # in twice ("param 0 already assigned swap buffer"): parameters are read when needed.
        sections["zero_optimization.stage3_prefetch_bucket_size"] = 0
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


def return_freed_memory() -> None:
    """Have glibc serve every allocation above 1 MiB from its own mapping, returned to the system
    when freed. An offloaded run moves tens of GB through short-lived host tensors (swapped
    sub-groups, checkpoint pieces); with glibc's default the mmap threshold rises with each freed
    block, up to 32 MiB, and the heap kept what a checkpoint of 6 GPT-2 XL layers had copied
    (+1.0 GiB resident after the save; back to the pre-save figure with this)."""
    libc = ctypes.CDLL(None)
    if hasattr(libc, "mallopt"):
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 20)
