"""How much model-state memory does each rank of pipeline stages hold, ZeRO-1 against ZeRO-3?

    deepspeed --num_gpus 4 --module bench.stage_memory [--json FILE]   # pp2 x dp2, ~1 min on a 2-core CPU

Model-state memory per rank of pipeline stages (parallel/stage_pipeline.py).
Builds train.py's engine for pp2 x dp2 at each ZeRO stage on a small GPT (4 layers, 256 wide, so
that most matrices are above ZeRO-3's persistence threshold of 1e5 elements and get partitioned),
runs two optimizer steps, and counts the bytes of the storages each rank holds: weights (ZeRO-3:
its partitions plus the small parameters it keeps whole), gradients (the most held after any
micro-batch's backward), fp32 master weights and Adam's two moments. Results:
bench/results/stage_memory-DATE.json and a table, with the planner's estimate (describe_layout).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import torch.distributed as dist

from bench import harness
from megagpt.config import load_config
from megagpt.parallel.topology import Topology
from megagpt.sizing.layout_rules import describe_layout, plan_layout
from megagpt.sizing.parameters import FP32_ADAM, model_state_bytes, stage_parameters
from megagpt.training.engine import build_engine, init_distributed, leave_distributed

MODEL = ["model.n_layer=4", "model.n_embd=256", "model.n_head=4", "model.block_size=64",
         "train.micro_batch_size=2", "train.grad_accum=2", "parallel.pp=2"]


def tensor_bytes(tensors) -> int:
    """Bytes of the storages behind `tensors`, each storage once (ZeRO keeps views of flat buffers)."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in tensors if t is not None}
    return sum(storages.values())


def grad_bytes(engine) -> int:
    """Gradients held now: .grad tensors, ZeRO-1/2's accumulation buffers and partitions, ZeRO-3's
    flat partition buffer."""
    opt = engine.optimizer
    params = list(engine.module.parameters())
    held = [p.grad for p in params] + [getattr(p, "grad_accum", None) for p in params]
    held.append(getattr(opt, "grad_partitions_flat_buffer", None))  # ZeRO-3
    for partitions in getattr(opt, "averaged_gradients", {}).values():  # ZeRO-1/2
        held += list(partitions or [])
    return tensor_bytes(held)


def measure(zero: int) -> dict:
    cfg = load_config("configs/tiny.yaml", [*MODEL, f"parallel.zero_stage={zero}"])
    layout = plan_layout(cfg, dist.get_world_size())
    topo = Topology(layout)
    engine, _ = build_engine(cfg, topo)
    peak = {"grads": 0}
    step = engine.engine.step

    def step_and_record(*args, **kwargs):  # after each micro-batch's backward: the most held
        peak["grads"] = max(peak["grads"], grad_bytes(engine))
        return step(*args, **kwargs)

    engine.engine.step = step_and_record
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        batch = [(torch.randint(0, 512, (2, 64), generator=generator),) * 2 for _ in range(2)]
        engine.train_batch(iter(batch))
    opt = engine.optimizer
    params = list(engine.module.parameters())
    # ZeRO-3: a gathered-and-released parameter's data is empty, a persistent (small) one whole.
    weights = tensor_bytes(p.data for p in params)
    weights += tensor_bytes(getattr(p, "ds_tensor", None) for p in params)
    masters = getattr(opt, "fp32_partitioned_groups_flat", None) or opt.single_partition_of_fp32_groups
    adam = [t for state in opt.optimizer.state.values() for k, t in state.items() if k != "step"]
    return {"rank": dist.get_rank(), "stage": topo.pp_rank, "dp_rank": topo.dp_rank, "zero": zero,
            "weights": weights, "grads": peak["grads"], "fp32_master": tensor_bytes(masters),
            "adam": tensor_bytes(adam), "planner": describe_layout(layout, cfg, on_gpu=False),
            "planner_bytes": sum(model_state_bytes(stage_parameters(cfg.model, layout.pp, layout.tp),
                                                   layout.dp, zero, FP32_ADAM))}


def summarize(settings: dict[str, Any], figures: dict[str, Any]) -> harness.Result:
    """The harness result of a run: `figures` holds per_rank (bytes of each kind, each rank and stage)."""
    table = harness.Table(["zero", "rank", "stage", "weights KiB", "grads KiB", "master KiB", "adam KiB",
                           "total KiB", "planner KiB"])
    for r in figures["per_rank"]:
        table.add(r["zero"], r["rank"], r["stage"], *(round(r[k] / 1024) for k in (
            "weights", "grads", "fp32_master", "adam", "total", "planner_bytes")))
    return harness.Result(
        question=harness.question_of(__doc__), settings=settings, figures=figures, table=table,
        reference="megagpt's planner estimate of the same layout (sizing.parameters.model_state_bytes)")


def main() -> None:
    p = harness.parser(__doc__)
    p.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # the deepspeed launcher's
    args = p.parse_args()
    init_distributed()
    rows = []
    for zero in (1, 3):
        mine = measure(zero)
        mine["total"] = mine["weights"] + mine["grads"] + mine["fp32_master"] + mine["adam"]
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, mine)
        rows += gathered
    if dist.get_rank() == 0:
        for zero in (1, 3):
            print(f"planner, zero {zero}: " + next(r["planner"] for r in rows if r["zero"] == zero))
        settings = {"layout": "pp2 x dp2", "model": MODEL, "zero_stages": [1, 3], "steps": 2}
        harness.report("stage_memory", summarize(settings, {"per_rank": rows}), args.json)
    dist.barrier()
    leave_distributed()


if __name__ == "__main__":
    main()
