"""megagpt's checkpoints against DeepSpeed's own save_checkpoint / load_checkpoint of the same engine.

    python bench/checkpoint.py [--ranks 2] [--n-layer 12] [--n-embd 768] [--vocab 8192] [--json FILE]

Starts --ranks processes under torchrun, each building the GPT with ZeRO-3 (dp = ranks) as
train.py does, taking two optimizer steps (so Adam's moments exist) and then, in turn: megagpt's
save, DeepSpeed's save, megagpt's load, DeepSpeed's load (each rank timed, the slowest reported),
and an asynchronous save with training going on. Per rank: bytes written, host RSS growth during
each save (peak RSS sampled every 5 ms minus RSS before), the step time while an async save
writes against the step time without. Writes bench/results/checkpoint-<date>.json and a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
ROOT = Path(__file__).resolve().parents[1]


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


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    from megagpt import checkpoint
    from megagpt.config import load_config
    from megagpt.engine import build_engine, init_distributed, leave_distributed
    from megagpt.parallel.layout import plan_layout
    from megagpt.parallel.topology import Topology

    init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = load_config("configs/tiny.yaml", [
        f"model.n_layer={args.n_layer}", f"model.n_embd={args.n_embd}", f"model.n_head={args.n_embd // 64}",
        f"model.vocab_size={args.vocab}", "model.block_size=64", "train.micro_batch_size=1",
        "parallel.zero_stage=3"])
    topo = Topology(plan_layout(cfg, world))
    engine, _ = build_engine(cfg, topo)
    params = sum(p.ds_numel for p in engine.module.parameters())
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
    ours = checkpoint.Checkpointer(engine, topo, folder / "ours", cfg.model, NoTokenizer())
    result: dict[str, Any] = {"rank": rank, "parameters": params}
    with PeakRSS() as rss:
        result["ours_save_s"] = timed(lambda: ours.save(engine.global_steps, {"data": {}}))
    result["ours_save_rss_mib"] = rss.growth_mib
    with PeakRSS() as rss:
        result["deepspeed_save_s"] = timed(lambda: engine.save_checkpoint(str(folder / "ds"), tag="ds"))
    result["deepspeed_save_rss_mib"] = rss.growth_mib
    path = checkpoint.latest(folder / "ours")
    result["ours_bytes"] = (path / f"__{rank}_0.distcp").stat().st_size
    result["ours_load_s"] = timed(lambda: checkpoint.load(engine, topo, path))
    result["deepspeed_load_s"] = timed(lambda: engine.load_checkpoint(str(folder / "ds"), tag="ds"))

    # Async: the step time while a background save writes, against steps without one.
    plain = [step() for _ in range(args.steps)]
    background = checkpoint.Checkpointer(engine, topo, folder / "async", cfg.model, NoTokenizer(),
                                         async_save=True)
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
    shares: list[dict | None] = [None] * world
    dist.all_gather_object(shares, result)
    if rank == 0:
        sizes = {name: sum(f.stat().st_size for f in (folder / name).rglob("*") if f.is_file())
                 for name in ("ours", "ds")}
        Path(args.result).write_text(json.dumps({"ranks": shares, "folder_bytes": sizes}))
    dist.barrier()
    leave_distributed()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--n-layer", type=int, default=12)
    p.add_argument("--n-embd", type=int, default=768)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--steps", type=int, default=5, help="steps timed without a save in flight")
    p.add_argument("--json", default=f"bench/results/checkpoint-{date.today()}.json")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    with tempfile.TemporaryDirectory(dir=ROOT / "bench") as tmp:
        result = Path(tmp) / "result.json"
        cmd = ["torchrun", "--nproc_per_node", str(args.ranks), "--master_port", "29561", __file__,
               "--worker", "--out", tmp, "--result", str(result), "--n-layer", str(args.n_layer),
               "--n-embd", str(args.n_embd), "--vocab", str(args.vocab), "--steps", str(args.steps)]
        env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
        subprocess.run(cmd, cwd=ROOT, env=env, check=True)
        measured = json.loads(result.read_text())
    ranks, sizes = measured["ranks"], measured["folder_bytes"]
    params = ranks[0]["parameters"]
    summary = {
        "parameters": params, "ranks": args.ranks, "zero_stage": 3,
        "model": {"n_layer": args.n_layer, "n_embd": args.n_embd, "vocab_size": args.vocab},
        "ours_bytes_per_param": sizes["ours"] / params,
        "deepspeed_bytes_per_param": sizes["ds"] / params,
        "ours_rank_share": [r["ours_bytes"] / sum(s["ours_bytes"] for s in ranks) for r in ranks],
        "per_rank": ranks,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other work)",
    }
    Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{params / 1e6:.1f}M parameters, ZeRO-3, dp={args.ranks}; bytes/param: megagpt "
          f"{summary['ours_bytes_per_param']:.2f}, DeepSpeed {summary['deepspeed_bytes_per_param']:.2f}")
    print(f"{'rank':>4} {'share':>6} {'save s':>7} {'DS save s':>9} {'load s':>7} {'DS load s':>9} "
          f"{'RSS+ MiB':>8} {'DS RSS+':>8} {'async call s':>12} {'step s':>7} {'step async s':>12}")
    for r, share in zip(ranks, summary["ours_rank_share"]):
        during = r["step_during_async_s"]
        print(f"{r['rank']:>4} {share:>6.1%} {r['ours_save_s']:>7.2f} {r['deepspeed_save_s']:>9.2f} "
              f"{r['ours_load_s']:>7.2f} {r['deepspeed_load_s']:>9.2f} {r['ours_save_rss_mib']:>8.0f} "
              f"{r['deepspeed_save_rss_mib']:>8.0f} {r['async_save_call_s']:>12.2f} {r['step_s']:>7.2f} "
              f"{during if during is None else round(during, 2)!s:>12}")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
