"""The dp x pp x tp layout of a run: checked before any compute, then turned into process groups.

Ranks are laid out as DeepSpeed's PipeModelDataParallelTopology does (axes pipe, data, model with
model innermost), so the tp ranks of a group are adjacent: on a GPU node they share the fast links.
The same grid object is the `mpu` DeepSpeed takes, for ZeRO-3 (pp == 1) and for the pipeline engine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist
from deepspeed.runtime.pipe.topology import PipelineParallelGrid, PipeModelDataParallelTopology

from megagpt.config import ConfigError, RunConfig
from megagpt.plan import stage_parameters

# Bytes per parameter of the model states: weights + gradients + Adam (fp32 master, m, v).
_FP32_STATES = (4, 4, 8)
_BF16_STATES = (2, 2, 12)


@dataclass(frozen=True)
class Layout:
    world: int
    dp: int
    pp: int
    tp: int
    zero_stage: int
    activation_checkpoint: int

    def describe(self, run: RunConfig, on_gpu: bool) -> str:
        """One line: the layout, batch, parameters and model-state memory per rank."""
        t = run.train
        total = stage_parameters(run.model, pp=1, tp=1)
        per_rank = stage_parameters(run.model, self.pp, self.tp)
        states = _BF16_STATES if on_gpu else _FP32_STATES
        # ZeRO-1 shards the optimizer state over dp, ZeRO-2 also the gradients, ZeRO-3 also the weights.
        shard = [self.zero_stage >= 3, self.zero_stage >= 2, self.zero_stage >= 1]
        memory = sum(b / (self.dp if s else 1) for b, s in zip(states, shard)) * per_rank
        return (
            f"world {self.world} | dp {self.dp} | pp {self.pp} | tp {self.tp} | zero {self.zero_stage} | "
            f"batch {t.micro_batch_size} micro x {t.grad_accum} accum x {self.dp} dp = "
            f"{t.micro_batch_size * t.grad_accum * self.dp} sequences of {run.model.block_size} tokens | "
            f"{total / 1e6:.2f}M parameters, {per_rank / 1e6:.2f}M per rank | model states "
            f"~{memory / 2**30:.2f} GiB per rank ({'bf16' if on_gpu else 'fp32'} + Adam; "
            "activations not counted)"
        )


def plan_layout(run: RunConfig, world: int) -> Layout:
    """The layout `run` asks for on `world` processes, or a ConfigError saying why not and what would run."""
    p, m = run.parallel, run.model
    tp, pp = p.tp, p.pp
    if world % (tp * pp):
        fits = [f"tp={a} pp={b}" for a in _divisors(world) for b in _divisors(world // a)
                if m.n_head % a == 0 and b <= m.n_layer]
        raise ConfigError(
            f"world size {world} is not divisible by parallel.tp x parallel.pp = {tp} x {pp}; "
            f"dp is what is left of the world, so tp x pp must divide it. On {world} processes these "
            f"run: {', '.join(fits)}"
        )
    if m.n_head % tp:
        raise ConfigError(
            f"parallel.tp={tp} does not divide model.n_head={m.n_head}: tensor parallelism splits "
            f"whole attention heads; use tp in {_divisors(m.n_head)} (with tp x pp dividing the world)"
        )
    if m.padded_vocab_size % tp:
        raise ConfigError(
            f"parallel.tp={tp} does not divide the padded vocabulary ({m.padded_vocab_size} = "
            f"model.vocab_size={m.vocab_size} rounded up to model.vocab_pad_multiple="
            f"{m.vocab_pad_multiple}): the embedding and the LM head are split over it; set "
            f"model.vocab_pad_multiple={128 * tp} (Megatron's 128 x tp), or use tp=1"
        )
    if pp > m.n_layer:
        raise ConfigError(
            f"parallel.pp={pp} is more than model.n_layer={m.n_layer}: each pipeline stage needs a "
            f"transformer block; use pp <= {m.n_layer}"
        )
    stage = p.zero_stage
    if stage == "auto":
        # ZeRO-3 where DeepSpeed allows it; its PipelineEngine takes only ZeRO-0/1.
        stage = 3 if pp == 1 else 1
    if pp > 1 and stage >= 2:
        raise ConfigError(
            f"parallel.zero_stage={stage} with parallel.pp={pp}: DeepSpeed's PipelineEngine refuses "
            "ZeRO-2 and ZeRO-3 (they communicate per micro-batch, the pipeline runs many); this runs: "
            f"parallel.zero_stage=1 (or auto) with pp={pp}, or zero_stage={stage} with pp=1"
        )
    if p.compile is True and (pp > 1 or stage == 3):
        raise ConfigError(
            f"parallel.compile=true with parallel.pp={pp} and zero stage {stage}: megagpt compiles the "
            "whole model through DeepSpeed's engine.compile, which the PipelineEngine does not offer, "
            "and under ZeRO-3 torch.compile traces DeepSpeed's per-module parameter hooks and "
            "recompiles at every module until it gives up (measured with DeepSpeed 0.19.8); this "
            "runs: parallel.compile=true with pp=1 and parallel.zero_stage 0-2, or compile=auto"
        )
    if p.activation_checkpoint < 0:
        raise ConfigError(f"parallel.activation_checkpoint must be >= 0, got {p.activation_checkpoint}")
    return Layout(world=world, dp=world // (tp * pp), pp=pp, tp=tp, zero_stage=stage,
                  activation_checkpoint=p.activation_checkpoint)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


class Topology:
    """Process groups of a layout. Builds every group on every rank (torch requires it), in one order."""

    def __init__(self, layout: Layout):
        self.layout = layout
        self.ds_topology = PipeModelDataParallelTopology(num_pp=layout.pp, num_mp=layout.tp, num_dp=layout.dp)
        # The grid is DeepSpeed's `mpu`: data-parallel groups for ZeRO, model-parallel ones for clipping.
        self.mpu = PipelineParallelGrid(topology=self.ds_topology)
        coord = self.ds_topology.get_coord(dist.get_rank())
        self.dp_rank, self.pp_rank, self.tp_rank = coord.data, coord.pipe, coord.model

    @property
    def tp_group(self) -> dist.ProcessGroup:
        return self.mpu.get_slice_parallel_group()

    @property
    def dp_group(self) -> dist.ProcessGroup:
        return self.mpu.get_data_parallel_group()
