"""Run under 4 processes (tp=2 x dp=2, ZeRO-3): is each tp rank's ZeRO-3 shard its own slice?

Builds the GPT as train.py does and, for comparison, as DeepSpeed's zero.Init is usually written
(no data_parallel_group), gathers every parameter within its dp group, and compares it with this tp
rank's slice of the one-process GPT of the same seed. Prints one JSON line per build on rank 0.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[2])

import deepspeed  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from megagpt.config import load_config  # noqa: E402
from megagpt.model.gpt import GPT  # noqa: E402
from megagpt.parallel.launcher import fill_rank_env  # noqa: E402
from megagpt.parallel.tensor import take_split, tensor_parallel_layers  # noqa: E402
from megagpt.parallel.topology import Topology  # noqa: E402
from megagpt.sizing.layout_rules import plan_layout  # noqa: E402
from megagpt.training.deepspeed_config import build_ds_config  # noqa: E402
from megagpt.training.engine import build_model  # noqa: E402


def mismatches(model: torch.nn.Module, whole: dict[str, torch.Tensor], topo: Topology) -> list[str]:
    wrong = []
    for name, param in model.named_parameters():
        with deepspeed.zero.GatheredParameters([param]):
            mine = param.detach().clone()
        split = getattr(param, "tp_split", None)
        expected = whole[name] if split is None else take_split(whole[name], split, topo.tp_group)
        if mine.shape != expected.shape or not torch.equal(mine, expected):
            wrong.append(name)
    return wrong


def main() -> None:
    fill_rank_env()
    deepspeed.init_distributed(dist_backend="gloo")
    cfg = load_config("configs/tiny.yaml", ["parallel.tp=2", "parallel.zero_stage=3"])
    topo = Topology(plan_layout(cfg, dist.get_world_size()))
    ds_config, _ = build_ds_config("ds_config.json", cfg, topo.layout.dp, 3, on_gpu=False)
    torch.manual_seed(cfg.train.seed)
    whole = GPT(cfg.model).state_dict()

    right = mismatches(build_model(cfg, topo, ds_config), whole, topo)
    torch.manual_seed(cfg.train.seed)
    with deepspeed.zero.Init(config_dict_or_path=ds_config, mpu=topo.mpu):  # the PITFALLS trap
        trap = GPT(cfg.model, tensor_parallel_layers(topo.tp_group))
    wrong = mismatches(trap, whole, topo)
    results = [None] * dist.get_world_size()
    dist.all_gather_object(results, {"rank": dist.get_rank(), "train_py": right, "without_dp_group": wrong})
    if dist.get_rank() == 0:
        print("SHARDS " + json.dumps(results), flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
