"""Host memory and offload-folder bytes one rank needs for its ZeRO-3 offload choice.

What lives where, per element of the rank's partition (P elements: its share of its stage's tp
slice), from DeepSpeed 0.19.8's ZeRO-3 and measured in bench/results/offload_xl-*.json:
- parameters (2 bytes in bf16 on a GPU, 4 in fp32 on a CPU): on the device, in host memory
  (cpu), or in the offload folder (nvme) read through `buffer_count` swap buffers, each as large
  as the largest parameter partition (the embedding);
- the optimizer state (fp32 master weight, Adam's two moments, the fp32 gradient it steps with:
  16 bytes): on the device, in host memory (cpu), or in the folder (nvme) read a sub-group at a
  time through four buffers as large as the largest sub-group; with nvme the gradients of the
  whole partition still wait in host memory for the step (one flat buffer, 4 bytes in fp32), and
  with the parameters on nvme too, one more buffer writes the stepped weights back;
- plus what every process holds: the framework (torch, DeepSpeed, the engine: 1.43 GiB on a CPU)
  and DeepSpeed's per-parameter bookkeeping (0.34 bytes a parameter). Both fitted to GPT-2
  XL-width runs of 2, 6, 12 and 48 layers (143.6M to 1,557.7M parameters, optimizer and weights on
  nvme): the model meets each measured peak within 0.02 GiB.
On a CPU the device is the host, so what stays "on the device" counts here too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from megagpt.config import ModelConfig
from megagpt.parallel.layout import Layout
from megagpt.sizing.parameters import stage_parameters

FRAMEWORK_BYTES = 1.43 * 2**30  # torch + DeepSpeed + megagpt imported, engine built, on a CPU
BOOKKEEPING_BYTES = 0.34  # a parameter, whatever is offloaded (fitted, see module docstring)
OPTIMIZER_BYTES = 16  # fp32 master + exp_avg + exp_avg_sq + fp32 gradient
OPTIMIZER_SWAP_BUFFERS = 4
ALIGNMENT = 1 << 20  # elements: swap sizes are rounded up to DeepSpeed's aio block


@dataclass(frozen=True)
class SwapSizes:
    """The sizes DeepSpeed's swappers need, in elements."""

    sub_group_size: int
    param_buffer_size: int
    param_buffer_count: int


def swap_sizes(model: ModelConfig, layout: Layout) -> SwapSizes:
    """Sizes derived from the model: a rank's partition, its largest parameter, its module widths."""
    partition = stage_parameters(model, layout.pp, layout.tp) / layout.dp
    # Sixteen sub-groups a partition, between 1e7 (smaller ones make the per-sub-group overhead
    # dominate) and DeepSpeed's 1e9: GPT-2 XL on one rank steps 1.56e9 elements in sub-groups of 1e8,
    # whose four swap buffers take 1.6 GB of host memory.
    sub_group = _round_up(int(min(1e9, max(1e7, partition / 16))), ALIGNMENT)
    largest = math.ceil(model.padded_vocab_size * model.n_embd / layout.tp / layout.dp)
    # Parameters under stage3_param_persistence_threshold (LayerNorms, biases) stay in memory. With
    # prefetch off and reuse distance 0 (training/offload.py) a module gathers its own matrix and
    # releases it after use, so few are in flight: 4 suffice (11, enough for two Blocks
    # prefetched, cost 2.3 GB more at GPT-2 XL's 80M-element buffers).
    count = 4
    return SwapSizes(sub_group, _round_up(largest, ALIGNMENT), count)


@dataclass(frozen=True)
class OffloadNeed:
    """Bytes one rank needs: in host memory, and in the offload folder."""

    host: float
    disk: float


def offload_bytes(model: ModelConfig, layout: Layout, on_gpu: bool, tokens: int = 0) -> OffloadNeed:
    """The host memory and folder bytes of one rank of `layout` (activations of `tokens` a micro
    batch are a device cost, counted by the planner, and on a CPU small next to these at 1-2k)."""
    partition = stage_parameters(model, layout.pp, layout.tp) / layout.dp
    param_bytes = 2 if on_gpu else 4
    sizes = swap_sizes(model, layout)
    host = disk = 0.0
    where = {"params": layout.offload_params, "optimizer": layout.offload_optimizer}
    # A sub-group closes after the parameter that crosses sub_group_size: one holds the embedding.
    largest_group = max(sizes.sub_group_size, sizes.param_buffer_size)
    if where["params"] == "nvme":  # the tied embedding has a second file, for the LM head
        disk += param_bytes * (partition + model.padded_vocab_size * model.n_embd / layout.tp / layout.dp)
        host += param_bytes * (sizes.param_buffer_size * sizes.param_buffer_count + largest_group)
    elif where["params"] == "cpu" or not on_gpu:
        host += param_bytes * partition
    if where["optimizer"] == "nvme":
        disk += OPTIMIZER_BYTES * partition
        host += param_bytes * partition + 4 * largest_group * OPTIMIZER_SWAP_BUFFERS
    elif where["optimizer"] == "cpu" or not on_gpu:
        host += OPTIMIZER_BYTES * partition
    if not on_gpu:
        host += FRAMEWORK_BYTES + BOOKKEEPING_BYTES * partition
    return OffloadNeed(host=host, disk=disk)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
