"""How big a GPT is and what its training state weighs: the one place this arithmetic lives.

Parameter counts follow megagpt's model (megagpt/model/gpt.py) exactly, tensor by tensor, and are
checked against a built model's real parameters in tests/perf/test_flops.py and test_plan.py.
FLOPs (megagpt.sizing.flops), the layout line a run logs (megagpt.parallel.layout) and the planner
(megagpt.sizing.planner) all count from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from megagpt.config import ModelConfig


def block_parameters(model: ModelConfig, tp: int = 1) -> int:
    """One Block's parameters on a tensor-parallel rank: QKV and MLP-in split by columns (with
    their biases), attention-out and MLP-out split by rows (bias whole), LayerNorms whole."""
    c, bias = model.n_embd, model.bias
    split = 12 * c * c + (7 * c if bias else 0)  # weights + QKV and MLP-in biases
    whole = (2 * c if bias else 0) + (4 * c if bias else 2 * c)  # row-parallel biases + 2 LNs
    return split // tp + whole


def final_norm_parameters(model: ModelConfig) -> int:
    """GPT-2's LayerNorm after the last block (GPT-1 has none)."""
    return (2 if model.bias else 1) * model.n_embd if model.arch == "gpt2" else 0


def matmul_parameters(model: ModelConfig) -> int:
    """Weights a token is multiplied with: every block's matrices and biases, LayerNorms and the
    (tied) output layer over the real vocabulary. The position table is excluded: it is indexed,
    not multiplied."""
    return (model.n_layer * block_parameters(model) + final_norm_parameters(model)
            + model.vocab_size * model.n_embd)


def stage_parameters(model: ModelConfig, pp: int = 1, tp: int = 1) -> int:
    """Parameters on the most loaded rank: ceil(n_layer / pp) blocks plus the embeddings, which
    the first stage holds and the last stage holds again (the tied output layer). With pp = tp = 1
    this is the whole model (vocabulary padded), the tied embedding counted once."""
    wte = model.padded_vocab_size * model.n_embd // tp
    wpe = model.block_size * model.n_embd
    ln_f = final_norm_parameters(model)
    blocks = math.ceil(model.n_layer / pp) * block_parameters(model, tp)
    return blocks + wte + (wpe + ln_f if pp == 1 else max(wpe, ln_f))


@dataclass(frozen=True)
class StateBytes:
    """Bytes a parameter's training state takes, before any ZeRO partitioning."""

    params: int
    grads: int
    optimizer: int
    name: str


# Mixed precision (ZeRO's 2 + 2 + 12: bf16 weights and gradients, fp32 master weight and Adam's
# two moments) on a GPU. In fp32 DeepSpeed's ZeRO optimizers still keep their own fp32 master copy
# beside the fp32 weights (measured per rank by bench/stage_memory.py): 4 + 4 + 12.
BF16_ADAM = StateBytes(params=2, grads=2, optimizer=12, name="bf16 + Adam")
FP32_ADAM = StateBytes(params=4, grads=4, optimizer=12, name="fp32 + Adam")


def model_state_bytes(parameters: int, dp: int, zero_stage: int,
                      precision: StateBytes = BF16_ADAM) -> tuple[float, float, float]:
    """(weights, gradients, optimizer state) bytes on one rank holding `parameters`: ZeRO-1
    partitions the optimizer state over dp, ZeRO-2 also the gradients, ZeRO-3 also the weights."""
    return (parameters * precision.params / (dp if zero_stage >= 3 else 1),
            parameters * precision.grads / (dp if zero_stage >= 2 else 1),
            parameters * precision.optimizer / (dp if zero_stage >= 1 else 1))
