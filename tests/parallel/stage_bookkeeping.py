"""Run by test_stage_pipeline.py in a process of its own (world of 1, gloo): one ZeRO-3 optimizer
step over two micro-batches, in the sequential order F0 B0 F1 B1 and in the pipeline's F0 F1 B0 B1
(1F1B's warm-up), with and without clear_backward_seen_flag() before each backward (trap e).
Prints RESULT {order: max |weight - sequential weight| or the error}."""

from __future__ import annotations

import json
import os

import deepspeed
import torch
import torch.nn as nn
from deepspeed.utils import safe_get_full_fp32_param

CONFIG = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2,
          "zero_optimization": {"stage": 3}, "zero_allow_untested_optimizer": True,
          "optimizer": {"type": "SGD", "params": {"lr": 1.0}}}


def weights_after(order: str, clear: bool) -> list[torch.Tensor]:
    torch.manual_seed(0)
    with deepspeed.zero.Init(config_dict_or_path=CONFIG):
        model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=CONFIG)
    data = [torch.randn(2, 8, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    losses = {}
    for kind, i in [(step[0], int(step[1])) for step in order.split()]:
        if kind == "F":
            losses[i] = engine(data[i]).square().mean()
        else:
            if clear:
                engine.optimizer.clear_backward_seen_flag()
            engine.backward(losses.pop(i))
            engine.step()
    return [safe_get_full_fp32_param(p).clone() for p in engine.module.parameters()]


def main() -> None:
    deepspeed.init_distributed(dist_backend="gloo")
    sequential = weights_after("F0 B0 F1 B1", clear=False)
    result = {}
    for name, order, clear in [("pipelined_with_clear", "F0 F1 B0 B1", True),
                               ("pipelined_without_clear", "F0 F1 B0 B1", False)]:
        try:
            got = weights_after(order, clear)
            result[name] = max((a - b).abs().max().item() for a, b in zip(got, sequential))
        except Exception as e:  # noqa: BLE001 - what DeepSpeed raises is what the test reports
            result[name] = f"{type(e).__name__}: {e}"
    print("RESULT " + json.dumps(result), flush=True)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("LOCAL_RANK", "0")
    main()
