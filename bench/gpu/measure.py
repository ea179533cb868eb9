"""What the parts of `python -m bench.gpu_train` share: their budgets and sizes, the figures a part
writes, engines built as train.py builds them, timed training steps, a token chain to learn."""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from deepspeed.accelerator import get_accelerator

from bench.harness import ROOT
from megagpt.config import ModelConfig, RunConfig, load_config
from megagpt.parallel.topology import Topology
from megagpt.sizing.flops import accelerator_name, device_peak_flops, mfu, training_flops_per_token
from megagpt.training.engine import build_engine, run_layout

# Seconds, sized for an H100/H200 with cold caches: small compiles two models (about a minute each).
BUDGETS = {"tests": 150, "small": 190, "precision": 100, "xl": 100, "loss": 40}
CHAIN_STATES, CHAIN_SUCCESSORS = 2048, 4
LOGS = ROOT / "runs/gpu-check"

# flag: (default, under --smoke, what it is)
SIZES = {
    "steps": (20, 2, "timed steps (small)"),
    "warmup": (10, 1, "untimed steps before them (small; torch.compile compiles there)"),
    "micro_batch": (16, 4, "GPT-2 124M sequences a step (small, loss)"),
    # 200 fp32 steps of GPT-2 124M at 8 x 1024 tokens: about 40 s on an H100
    "precision_steps": (200, 20, "steps of each precision"),
    "precision_micro_batch": (8, 2, "sequences a step (precision)"),
    "xl_micro_batch": (8, 2, "GPT-2 1.5B sequences a step"),
    "xl_steps": (5, 2, "timed steps (xl)"),
    "xl_warmup": (2, 1, "untimed steps before them (xl)"),
}


class Figures(dict):
    """A part's figures, written to `path` at every addition: a part cut off by its time budget
    still reports what it measured."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path
        self.failed: list[str] = []

    def add(self, **figures) -> None:
        self.update(figures)
        self.path.write_text(json.dumps(self, indent=2))

    @contextmanager
    def measuring(self, key: str) -> Iterator[None]:
        """One measurement of several in a part: an exception in it is recorded under `key` and
        printed, and the part goes on to the next one (then exits as failed)."""
        try:
            yield
        except Exception as err:
            traceback.print_exc()
            self.failed.append(key)
            self.add(**{key: {"error": repr(err)}})


def config_name(args: argparse.Namespace, name: str) -> str:
    """configs/<name>.yaml; under --smoke configs/tiny.yaml (its toy model) instead."""
    return f"configs/{'tiny' if args.smoke else name}.yaml"


def run_config(args: argparse.Namespace, name: str, overrides: list[str]) -> RunConfig:
    return load_config(ROOT / config_name(args, name), overrides)


def engine_of(cfg: RunConfig):
    """The engine train.py would run `cfg` in, on this world (one process here)."""
    return build_engine(cfg, Topology(run_layout(cfg)))[0]


def free_memory() -> None:
    """Give the memory of dropped engines and models back before the next measurement."""
    gc.collect()
    get_accelerator().empty_cache()


def engine_run(cfg: RunConfig, batches: list[torch.Tensor], warmup: int) -> tuple[dict, float, list[float]]:
    """Train a fresh engine of `cfg` on `batches`: ({zero_stage, bf16, compiled}, the median step
    seconds after `warmup` steps, the losses); the engine is destroyed after."""
    free_memory()  # of the engines and models measured before
    engine = engine_of(cfg)
    seconds, losses = timed_steps(lambda batch: engine_step(engine, batch), batches, warmup)
    info = {"zero_stage": engine.zero_optimization_stage(), "bf16": engine.bfloat16_enabled(),
            "compiled": engine.is_compiled}
    engine.destroy()
    return info, seconds, torch.stack(losses).float().cpu().tolist()


def chain_batches(vocab: int, micro: int, seq: int, count: int, seed: int) -> list[torch.Tensor]:
    """`count` batches of (micro, seq + 1) token ids walking a fixed random chain: each of
    CHAIN_STATES ids is followed by one of its CHAIN_SUCCESSORS successors, so a model learns it
    (loss from ln vocab toward ln 4) and every run with the same seed sees the same tokens."""
    gen = torch.Generator().manual_seed(seed)
    states = min(vocab, CHAIN_STATES)
    successors = torch.randint(0, states, (states, CHAIN_SUCCESSORS), generator=gen)
    rows = count * micro
    tokens = torch.empty(rows, seq + 1, dtype=torch.long)
    tokens[:, 0] = torch.randint(0, states, (rows,), generator=gen)
    choice = torch.randint(0, CHAIN_SUCCESSORS, (rows, seq), generator=gen)
    for t in range(seq):
        tokens[:, t + 1] = successors[tokens[:, t], choice[:, t]]
    return list(tokens.view(count, micro, seq + 1))


def engine_step(engine, batch: torch.Tensor) -> torch.Tensor:
    """One training step as megagpt.train.train_step takes it (grad_accum 1); the loss."""
    batch = batch.to(engine.device)
    loss = engine(batch[:, :-1], batch[:, 1:], return_logits=False)[1]
    engine.backward(loss)
    engine.step()
    return loss.detach()


def timed_steps(step: Callable[[torch.Tensor], object], batches: list[torch.Tensor],
                warmup: int) -> tuple[float, list]:
    """(Median seconds of one step after `warmup` steps (compilation happens there), each step's
    result), the device synchronised around every step."""
    accel, times, results = get_accelerator(), [], []
    for batch in batches:
        accel.synchronize()
        start = time.perf_counter()
        results.append(step(batch))
        accel.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[warmup:]), results


def throughput(model: ModelConfig, micro: int, seconds: float) -> dict:
    """Step time, tokens/s and MFU (None without a known peak) of one device."""
    seq = model.block_size
    tokens_per_s = micro * seq / seconds
    peak = device_peak_flops(accelerator_name())
    return {"step_ms": seconds * 1e3, "tokens_per_s": tokens_per_s,
            "mfu": mfu(tokens_per_s, training_flops_per_token(model, seq), 1, peak)}
