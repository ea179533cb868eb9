"""The distributed world and the DeepSpeed engine, built one way for every entry point.

megagpt.train, megagpt.tasks.finetune and the benchmarks (bench/gpu_train.py, bench/checkpoint.py) join
the process group with init_distributed and get their engine from here, so a benchmark measures
what users run: the same ds_config.json filling, parameter groups, lr schedule and compilation.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d
from deepspeed.accelerator import get_accelerator

from megagpt.config import RunConfig, TrainConfig
from megagpt.model.gpt import GPT, Layers
from megagpt.parallel.launcher import bind_device, fill_rank_env
from megagpt.parallel.layout import Layout
from megagpt.parallel.stage_pipeline import PipelineStage, build_stage
from megagpt.parallel.tensor import tensor_parallel_layers
from megagpt.parallel.topology import Topology
from megagpt.sizing.flops import accelerator_name, device_peak_flops
from megagpt.sizing.layout_rules import Devices, plan_layout
from megagpt.training.deepspeed_config import build_ds_config
from megagpt.training.offload import offload_values, return_freed_memory

log = logging.getLogger("megagpt.training.engine")


def init_distributed(timeout_s: float = 600.0) -> None:
    """Join the process group whichever launcher started us (deepspeed, torchrun, mpirun, srun, none)."""
    fill_rank_env()
    bind_device()  # before DeepSpeed reads LOCAL_RANK as the device index
    # A collective outwaiting this raises instead of hanging: a lost rank ends the run (fault.*).
    timeout = timedelta(seconds=timeout_s)
    # DeepSpeed's grid and ZeRO make their groups with new_group(ranks) and no timeout, which torch
    # fills from these module defaults (30 minutes for gloo), not from the world group's timeout.
    c10d.default_pg_timeout = c10d.default_pg_nccl_timeout = timeout
    deepspeed.init_distributed(timeout=timeout)
    if on_cpu() and "OMP_NUM_THREADS" not in os.environ:
        # Share the cores instead of every rank spawning one thread per core.
        local = int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size()))
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // local))


def leave_distributed() -> None:
    """Leave the process group, and on a CPU remove this rank's shared-memory buffer: DeepSpeed's
    shm comm op creates /dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank> (66 MiB, in
    memory) for each rank and never unlinks it, so every CPU run would leave its ranks' behind. The
    other ranks keep their mappings; unlinking only removes the name."""
    rank = dist.get_rank()
    # Leaving without this has crashed at exit ("terminate called without an active exception").
    dist.destroy_process_group()
    if on_cpu():
        name = (f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR')}_"
                f"{os.environ.get('MASTER_PORT')}_{rank}")
        Path("/dev/shm", name).unlink(missing_ok=True)


def on_cpu() -> bool:
    return get_accelerator().device_name() == "cpu"


def run_layout(cfg: RunConfig) -> Layout:
    """The layout of `cfg` on this world and these devices (the planner picks zero_stage=auto's
    stage for the GPUs' memory), or a ConfigError saying why it cannot run."""
    world, devices = dist.get_world_size(), None
    if not on_cpu():
        devices = Devices(memory_gib=get_accelerator().total_memory() / 2**30,
                          per_node=int(os.environ.get("LOCAL_WORLD_SIZE", world)),
                          peak_flops=device_peak_flops(accelerator_name()))
    return plan_layout(cfg, world, devices)


def warmup_cosine(t: TrainConfig) -> Callable[[int], float]:
    """The lr factor of a step: linear warmup to train.lr, then cosine decay to train.lr *
    min_lr_ratio at max_steps."""

    def factor(step: int) -> float:
        if step < t.warmup_steps:
            return (step + 1) / t.warmup_steps
        progress = min(1.0, (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps))
        return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices only; biases and LayerNorm gains stay undecayed (as GPT-2 / nanoGPT)."""
    params = list(model.parameters())
    is_matrix = [len(getattr(p, "ds_shape", p.shape)) >= 2 for p in params]  # ZeRO-3 flattens p
    return [
        {"params": [p for p, m in zip(params, is_matrix) if m], "weight_decay": weight_decay},
        {"params": [p for p, m in zip(params, is_matrix) if not m], "weight_decay": 0.0},
    ]


def initialize(model: torch.nn.Module, ds_config: dict[str, Any], weight_decay: float,
               schedule: Callable[[int], float], mpu: Any = None,
               compile_model: bool = False) -> deepspeed.DeepSpeedEngine:
    """`model` inside a DeepSpeed engine whose scheduler multiplies the lr by schedule(step)."""
    engine, *_ = deepspeed.initialize(
        model=model,
        model_parameters=param_groups(model, weight_decay),
        # The engine steps the schedule at each optimizer step and checkpoints it.
        lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
        config=ds_config,
        mpu=mpu,
    )
    if compile_model:
        log.info("compiling the model with torch.compile")
        engine.compile()  # DeepSpeed's: keeps ZeRO-3's parameter gathering outside the graphs
    return engine


def build_engine(cfg: RunConfig, topo: Topology
                 ) -> tuple[deepspeed.DeepSpeedEngine | PipelineStage, list[str]]:
    """The model of `cfg` on this rank's share of the layout, inside a DeepSpeed engine (with pp > 1
    a PipelineStage: the stage's engine under megagpt's pipeline schedule); and one line per
    ds_config.json value filled from `cfg`."""
    layout = topo.layout
    on_gpu = not on_cpu()
    ds_config, filled = build_ds_config(cfg.parallel.ds_config, cfg, layout.dp, layout.zero_stage, on_gpu,
                                        offload=offload_values(cfg, layout, on_gpu))
    if layout.offloads():
        return_freed_memory()
    model = build_model(cfg, topo, ds_config)
    compile_model = cfg.parallel.compile
    if compile_model == "auto":  # where it can help: see plan_layout's refusal for where it cannot
        compile_model = on_gpu and layout.pp == 1 and layout.zero_stage < 3
    engine = initialize(model, ds_config, cfg.train.weight_decay, warmup_cosine(cfg.train), mpu=topo.mpu,
                        compile_model=compile_model)
    if layout.pp > 1:  # megagpt's pipeline schedule drives the stage's engine
        engine = PipelineStage(engine, topo)
    return engine, filled


def build_model(cfg: RunConfig, topo: Topology, ds_config: dict[str, Any]) -> torch.nn.Module:
    """This rank's part of the GPT: tp slices of its layers, of its pipeline stage, ZeRO-3 sharded."""
    layout = topo.layout
    layers = tensor_parallel_layers(topo.tp_group) if layout.tp > 1 else Layers()
    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank and every layout
    if layout.pp > 1:
        return build_stage(cfg.model, layers, topo, ds_config)
    # With ZeRO-3 each parameter is partitioned as soon as its layer is built: never whole on a
    # rank. Partitioned over dp only: over the world it would overwrite other tp ranks' slices.
    with deepspeed.zero.Init(config_dict_or_path=ds_config, enabled=layout.zero_stage == 3,
                             data_parallel_group=topo.dp_group, mpu=topo.mpu):
        model = GPT(cfg.model, layers)
    model.transformer.checkpoint_blocks = layout.activation_checkpoint
    return model
