"""Which layout a run gets: the rules a dp x pp x tp layout must satisfy for a run config and a
world size (an impossible one is refused with why and what would run), parallel.zero_stage=auto
chosen by the planner, and the one-line description a run prints before any compute."""

from __future__ import annotations

from dataclasses import dataclass, replace

from megagpt.config import ConfigError, RunConfig, uses_bf16
from megagpt.parallel.layout import Layout, divisors
from megagpt.sizing.host_memory import offload_bytes
from megagpt.sizing.parameters import BF16_ADAM, FP32_ADAM, model_state_bytes, stage_parameters
from megagpt.sizing.planner import Cluster, fastest_zero_stage


def plan_layout(run: RunConfig, world: int, devices: Devices | None = None) -> Layout:
    """The layout `run` asks for on `world` processes (with zero_stage=auto, the planner's choice for
    `devices`), or a ConfigError saying why not and what would run."""
    p = run.parallel
    _check_split(run, world)
    layout = Layout(dp=world // (p.tp * p.pp), pp=p.pp, tp=p.tp,
                    zero_stage=0 if p.zero_stage == "auto" else p.zero_stage,
                    activation_checkpoint=p.activation_checkpoint, micro_batch=run.train.micro_batch_size,
                    offload_optimizer=p.offload_optimizer, offload_params=p.offload_params)
    if p.zero_stage == "auto" and layout.offloads():
        layout = replace(layout, zero_stage=3)  # offload streams ZeRO-3's partitions
    elif p.zero_stage == "auto":
        layout = replace(layout, zero_stage=auto_zero_stage(run, layout, devices))
    _check_features(run, layout)
    return layout


def _check_split(run: RunConfig, world: int) -> None:
    """Refuse a tp x pp that does not divide the world, the heads, the vocabulary or the blocks."""
    p, m = run.parallel, run.model
    tp, pp = p.tp, p.pp
    if world % (tp * pp):
        fits = [f"tp={a} pp={b}" for a in divisors(world) for b in divisors(world // a)
                if m.n_head % a == 0 and b <= m.n_layer]
        raise ConfigError(
            f"world size {world} is not divisible by parallel.tp x parallel.pp = {tp} x {pp}; "
            f"dp is what is left of the world, so tp x pp must divide it. On {world} processes these "
            f"run: {', '.join(fits)}"
        )
    if m.n_head % tp:
        raise ConfigError(
            f"parallel.tp={tp} does not divide model.n_head={m.n_head}: tensor parallelism splits "
            f"whole attention heads; use tp in {divisors(m.n_head)} (with tp x pp dividing the world)"
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


def _check_features(run: RunConfig, layout: Layout) -> None:
    """Refuse what this layout cannot combine with: compilation, evaluation tasks."""
    p, pp, stage = run.parallel, layout.pp, layout.zero_stage
    if p.compile is True and (pp > 1 or stage == 3):
        raise ConfigError(
            f"parallel.compile=true with parallel.pp={pp} and zero stage {stage}: megagpt compiles the "
            "whole model through DeepSpeed's engine.compile, not tried with megagpt's pipeline "
            "schedule, and under ZeRO-3 torch.compile traces DeepSpeed's per-module parameter hooks and "
            "recompiles at every module until it gives up (measured with DeepSpeed 0.19.8); this "
            "runs: parallel.compile=true with pp=1 and parallel.zero_stage 0-2, or compile=auto"
        )
    if run.eval.tasks and pp > 1:
        raise ConfigError(
            f"eval.tasks={list(run.eval.tasks)} with parallel.pp={pp}: the tasks score whole-model "
            "forwards and the pipeline splits the model over its stages; this runs: eval.tasks=[] during "
            "training and `python -m megagpt.evaluate --checkpoint <checkpoint.dir>` on the saved "
            "checkpoint (it consolidates any layout), or pp=1"
        )


@dataclass(frozen=True)
class Devices:
    """What a run's accelerators are, for parallel.zero_stage=auto: their memory and how many a node
    holds (the planner's cluster)."""

    memory_gib: float
    per_node: int
    peak_flops: float | None


def auto_zero_stage(run: RunConfig, layout: Layout, devices: Devices | None) -> int:
    """parallel.zero_stage=auto: on GPUs the stage megagpt.sizing.planner estimates fastest for this layout
    within their memory; without a memory budget to plan against (a CPU), 3, which shards the most."""
    if devices is None:
        return 3
    cluster = Cluster(gpus=layout.world, gpu_mem_gib=devices.memory_gib, gpus_per_node=devices.per_node,
                      **({"peak_flops": devices.peak_flops} if devices.peak_flops else {}))
    t = run.train
    return fastest_zero_stage(run.model, layout, cluster, t.micro_batch_size * t.grad_accum * layout.dp)


def describe_layout(layout: Layout, run: RunConfig, on_gpu: bool) -> str:
    """One line: the layout, batch, parameters and model-state memory per rank."""
    t = run.train
    total = stage_parameters(run.model)
    per_rank = stage_parameters(run.model, layout.pp, layout.tp)
    precision = BF16_ADAM if uses_bf16(t.precision, on_gpu) else FP32_ADAM
    memory = sum(model_state_bytes(per_rank, layout.dp, layout.zero_stage, precision))
    return (
        f"world {layout.world} | dp {layout.dp} | pp {layout.pp} | tp {layout.tp} | "
        f"zero {layout.zero_stage} | "
        f"batch {t.micro_batch_size} micro x {t.grad_accum} accum x {layout.dp} dp = "
        f"{t.micro_batch_size * t.grad_accum * layout.dp} sequences of {run.model.block_size} tokens | "
        f"{total / 1e6:.2f}M parameters, {per_rank / 1e6:.2f}M per rank | model states "
        f"~{memory / 2**30:.2f} GiB per rank ({precision.name}; activations not counted)"
        + _describe_offload(layout, run, on_gpu)
    )


def _describe_offload(layout: Layout, run: RunConfig, on_gpu: bool) -> str:
    if not layout.offloads():
        return ""
    need = offload_bytes(run.model, layout, on_gpu)
    where = ", ".join(f"{what} to {device}" for what, device in layout.offloads().items())
    return (f" | offload: {where}; host ~{need.host / 2**30:.2f} GiB, offload folder "
            f"~{need.disk / 1e9:.2f} GB per rank")
