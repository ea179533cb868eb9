"""Training FLOPs per token and model FLOPs utilisation (MFU).

FLOPs are counted the standard way (PaLM, Chowdhery et al. 2022, appendix B; nanoGPT's
estimate_mfu): a matmul with N weights costs 2N FLOPs per token forward and 4N backward, so 6N
per token for training, plus the attention scores and their weighted sum, 12 * n_layer * n_embd *
T per token (2 matmuls of T x head_dim per head, forward 2x, backward 4x); a locally banded layer
(GPT-3's sparse layers) attends to min(local_window, T) positions instead of T. N counts every weight
a token multiplies with: the blocks and the (tied) output layer; not the position table, which is
only looked up. Recomputation by activation checkpointing is not "model" FLOPs, so MFU ignores
it by definition (it shows as a lower MFU, as it should).

Peaks are dense bf16 tensor-core throughput from the vendors' data sheets. On a CPU there is no
meaningful peak, so runs there report achieved FLOP/s only.
"""

from __future__ import annotations

import torch
from deepspeed.accelerator import get_accelerator

from megagpt.config import ModelConfig
from megagpt.sizing.parameters import matmul_parameters

# Dense (no sparsity) bf16 peak, FLOP/s. Longer names first: "H100 PCIe" must not match "H100".
GPU_PEAK_BF16: dict[str, float] = {
    "GH200": 989e12,
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,  # SXM
    "H800": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "L40": 181e12,
    "L4": 121e12,
    "A10G": 70e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
    "RTX A6000": 155e12,
    "V100": 125e12,  # fp16: V100 has no bf16
}


def attended_positions(model: ModelConfig, seq_len: int) -> int:
    """Positions a token's attention spans, summed over the layers: T for a dense layer, the
    window for a banded one (counted like dense attention's T, as if every query saw all of it)."""
    span = {"dense": seq_len, "local": min(model.local_window, seq_len)}
    return sum(span[kind] for kind in model.layer_attention)


def training_flops_per_token(model: ModelConfig, seq_len: int | None = None) -> float:
    """6N + 12 * n_embd * (T per dense layer, the window per banded one): forward and backward
    FLOPs spent on one training token."""
    T = seq_len or model.block_size
    return 6 * matmul_parameters(model) + 12 * model.n_embd * attended_positions(model, T)


def accelerator_name() -> str:
    """The local accelerator's product name as torch reports it (e.g. "NVIDIA H100 80GB HBM3"), or
    DeepSpeed's device kind ("cpu") when it has none."""
    kind = get_accelerator().device_name()
    get_name = getattr(torch.get_device_module(kind), "get_device_name", None)
    return get_name() if kind != "cpu" and get_name is not None else kind


def device_peak_flops(device_name: str) -> float | None:
    """The bf16 peak of a GPU named like torch.cuda.get_device_name(); None when unknown or a CPU."""
    for key, peak in GPU_PEAK_BF16.items():
        if key.lower() in device_name.lower():
            return peak
    return None


def mfu(tokens_per_sec: float, flops_per_token: float, n_devices: int, peak: float | None) -> float | None:
    """Achieved model FLOP/s over the devices' peak; None without a known peak."""
    if peak is None:
        return None
    return tokens_per_sec * flops_per_token / (n_devices * peak)
