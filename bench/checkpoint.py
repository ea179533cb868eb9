"""How do megagpt's checkpoints compare with DeepSpeed's own save and load: time, bytes, host memory?

    python -m bench.checkpoint [--ranks 2] [--n-layer 12] [--n-embd 768] [--vocab 8192] [--json FILE]

megagpt's checkpoints against DeepSpeed's own save_checkpoint / load_checkpoint of the same engine.
Starts --ranks processes under torchrun, each building the GPT with ZeRO-3 (dp = ranks) as
train.py does, taking two optimizer steps (so Adam's moments exist) and then, in turn: megagpt's
save, DeepSpeed's save, megagpt's load, DeepSpeed's load (each rank timed, the slowest reported),
and an asynchronous save with training going on. Per rank: bytes written, host RSS growth during
each save (peak RSS sampled every 5 ms minus RSS before), the step time while an async save
writes against the step time without. Writes bench/results/checkpoint-DATE.json and a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import harness
from bench.harness import ROOT


class PeakRSS:
    """Peak resident memory of this process while the block runs, sampled every 5 ms."""

    def __enter__(self) -> PeakRSS:
        import psutil

        self.process = psutil.Process()
        self.before = self.peak = self.process.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.before) / 2**20


def timed(fn: Callable[[], Any]) -> float:
    import torch.distributed as dist

    dist.barrier()
    t0 = time.perf_counter()
    fn()
    dist.barrier()  # the save or load is done when the slowest rank is
    return time.perf_counter() - t0


class NoTokenizer:
    """The bench writes no tokenizer beside the weights."""

    def files(self) -> dict[str, str]:
        return {}


def save_and_load(engine, topo, cfg, folder: Path, rank: int) -> dict[str, Any]:
    """megagpt's save, DeepSpeed's save, megagpt's load, DeepSpeed's load: seconds, RSS growth, bytes."""
    from megagpt.checkpoint.checkpointer import Checkpointer, load
    from megagpt.checkpoint.folders import latest

    ours = Checkpointer(engine, topo, folder / "ours", cfg.model, NoTokenizer())
    result: dict[str, Any] = {}
    with PeakRSS() as rss:
        result["ours_save_s"] = timed(lambda: ours.save(engine.global_steps, {"data": {}}))
    result["ours_save_rss_mib"] = rss.growth_mib
    with PeakRSS() as rss:
        result["deepspeed_save_s"] = timed(lambda: engine.save_checkpoint(str(folder / "ds"), tag="ds"))
    result["deepspeed_save_rss_mib"] = rss.growth_mib
    path = latest(folder / "ours")
    result["ours_bytes"] = (path / f"__{rank}_0.distcp").stat().st_size
    result["ours_load_s"] = timed(lambda: load(engine, topo, path))
    result["deepspeed_load_s"] = timed(lambda: engine.load_checkpoint(str(folder / "ds"), tag="ds"))
    return result


def async_save(engine, topo, cfg, folder: Path, step: Callable[[], float], steps: int) -> dict[str, Any]:
    """The step time while a background save writes, against `steps` steps without one."""
    from megagpt.checkpoint.checkpointer import Checkpointer

    plain = [step() for _ in range(steps)]
    background = Checkpointer(engine, topo, folder / "async", cfg.model, NoTokenizer(), async_save=True)
    result: dict[str, Any] = {}
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        background.save(engine.global_steps, {"data": {}})
        result["async_save_call_s"] = time.perf_counter() - t0  # the copy to host: training waits for it
        during = []
        while background._writer is not None and background._writer.is_alive() and len(during) < 50:
            during.append(step())
        background.wait()
    result["async_save_rss_mib"] = rss.growth_mib
    result["step_s"] = statistics.median(plain)
    result["step_during_async_s"] = statistics.median(during) if during else None
    result["steps_during_async"] = len(during)
    return result


def worker(args: argparse.Namespace) -> None:
    """One torchrun rank: the engine train.py builds (ZeRO-3), two steps, then the measurements."""
    import torch
    import torch.distributed as dist

    from megagpt.config import load_config
    from megagpt.parallel.topology import Topology
    from megagpt.sizing.layout_rules import plan_layout
    from megagpt.training.engine import build_engine, init_distributed, leave_distributed

    init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = load_config("configs/tiny.yaml", [
        f"model.n_layer={args.n_layer}", f"model.n_embd={args.n_embd}", f"model.n_head={args.n_embd // 64}",
        f"model.vocab_size={args.vocab}", "model.block_size=64", "train.micro_batch_size=1",
        "parallel.zero_stage=3"])
    topo = Topology(plan_layout(cfg, world))
    engine, _ = build_engine(cfg, topo)
    generator = torch.Generator().manual_seed(rank)

    def step() -> float:
        t0 = time.perf_counter()
        x = torch.randint(0, args.vocab, (1, 64), generator=generator)
        _, loss = engine(x, x, return_logits=False)
        engine.backward(loss)
        engine.step()
        return time.perf_counter() - t0

    for _ in range(2):
        step()
    folder = Path(args.out)
    result = {"rank": rank, "parameters": sum(p.ds_numel for p in engine.module.parameters()),
              **save_and_load(engine, topo, cfg, folder, rank),
              **async_save(engine, topo, cfg, folder, step, args.steps)}
    shares: list[dict | None] = [None] * world
    dist.all_gather_object(shares, result)
    if rank == 0:
        sizes = {name: sum(f.stat().st_size for f in (folder / name).rglob("*") if f.is_file())
                 for name in ("ours", "ds")}
        Path(args.result).write_text(json.dumps({"ranks": shares, "folder_bytes": sizes}))
    dist.barrier()
    leave_distributed()


def summarize(settings: dict[str, Any], figures: dict[str, Any]) -> harness.Result:
    """The harness result of a run: `figures` holds parameters, the bytes a parameter of each
    checkpoint, and per_rank (each rank's timings and memory)."""
    table = harness.Table(["rank", "share", "save s", "DS save s", "load s", "DS load s", "RSS+ MiB",
                           "DS RSS+ MiB", "async call s", "step s", "step async s"])
    for r, share in zip(figures["per_rank"], figures["ours_rank_share"]):
        during = r["step_during_async_s"]
        table.add(r["rank"], f"{share:.1%}", *(round(r[k], 2) for k in (
            "ours_save_s", "deepspeed_save_s", "ours_load_s", "deepspeed_load_s")),
            round(r["ours_save_rss_mib"]), round(r["deepspeed_save_rss_mib"]),
            round(r["async_save_call_s"], 2), round(r["step_s"], 2),
            during if during is None else round(during, 2))
    return harness.Result(
        question=harness.question_of(__doc__), settings=settings, figures=figures, table=table,
        reference="DeepSpeed's save_checkpoint / load_checkpoint of the same engine, in the same run")


def run_workers(args: argparse.Namespace) -> dict:
    """torchrun --ranks workers (python -m bench.checkpoint --worker); what rank 0 gathered."""
    with tempfile.TemporaryDirectory(dir=ROOT / "bench") as tmp:
        result = Path(tmp) / "result.json"
        cmd = ["torchrun", "--nproc_per_node", str(args.ranks), "--master_port", "29561",
               "-m", "bench.checkpoint", "--worker", "--out", tmp, "--result", str(result),
               "--n-layer", str(args.n_layer), "--n-embd", str(args.n_embd), "--vocab", str(args.vocab),
               "--steps", str(args.steps)]
        env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
        subprocess.run(cmd, cwd=ROOT, env=env, check=True)
        return json.loads(result.read_text())


def main() -> None:
    p = harness.parser(__doc__)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--n-layer", type=int, default=12)
    p.add_argument("--n-embd", type=int, default=768)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--steps", type=int, default=5, help="steps timed without a save in flight")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    measured = run_workers(args)
    ranks, sizes = measured["ranks"], measured["folder_bytes"]
    params = ranks[0]["parameters"]
    settings = {"ranks": args.ranks, "zero_stage": 3, "steps": args.steps,
                "model": {"n_layer": args.n_layer, "n_embd": args.n_embd, "vocab_size": args.vocab}}
    figures = {
        "parameters": params, "folder_bytes": sizes,
        "ours_bytes_per_param": sizes["ours"] / params,
        "deepspeed_bytes_per_param": sizes["ds"] / params,
        "ours_rank_share": [r["ours_bytes"] / sum(s["ours_bytes"] for s in ranks) for r in ranks],
        "per_rank": ranks,
    }
    harness.report("checkpoint", summarize(settings, figures), args.json,
                   label="" if args.ranks == 2 else f"{args.ranks}ranks")


if __name__ == "__main__":
    main()
