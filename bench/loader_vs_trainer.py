"""Data loader throughput against what the trainer consumes, in one run.

    python bench/loader_vs_trainer.py [--shards data/shards] [--json OUT.json]

The loader side is megagpt.data's reader (shards -> packed windows -> this rank's micro-batch) as
the trainer uses it; the trainer side is a forward + backward + AdamW step of the model of each
config on those very batches, in one process. The ratio says how far the loader is from being
the bottleneck (goal: >= 20x). The shard folder defaults to the demo corpus and is built from the
bundled pages when missing.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from megagpt.config import load_config  # noqa: E402
from megagpt.data import RankBatches, open_dataset  # noqa: E402
from megagpt.model import GPT  # noqa: E402

CONFIGS = ["configs/tiny.yaml", "configs/demo.yaml"]


def loader_tokens_per_sec(shards: Path, block_size: int, micro_batch: int, seconds: float) -> float:
    batches = RankBatches(open_dataset(shards, [], block_size, seed=0), micro_batch, 0, 1)
    tokens, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:  # crosses epochs on a small corpus, as training does
        x, _ = next(batches)
        tokens += x.numel()
    return tokens / (time.perf_counter() - start)


def trainer_tokens_per_sec(shards: Path, config: str, vocab_size: int, steps: int) -> float:
    cfg = load_config(ROOT / config, [f"model.vocab_size={vocab_size}"])
    torch.manual_seed(0)
    model = GPT(cfg.model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    dataset = open_dataset(shards, [], cfg.model.block_size, seed=0)
    batches = RankBatches(dataset, cfg.train.micro_batch_size, 0, 1)
    times = []
    for i in range(steps + 2):  # the first two warm the allocator and create Adam's state
        x, y = next(batches)
        start = time.perf_counter()
        model(x, y, return_logits=False)[1].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return x.numel() / statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", type=Path, default=ROOT / "data/shards")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seconds", type=float, default=3.0, help="time to draw batches for")
    p.add_argument("--json", type=Path, default=ROOT / f"bench/results/loader_vs_trainer-{date.today()}.json")
    args = p.parse_args()
    if not (args.shards / "manifest.json").is_file():
        print(f"building {args.shards} from data/sample/html (about a minute)")
        subprocess.run([sys.executable, "-m", "pipelines.build", "--input", str(ROOT / "data/sample/html"),
                        "--output", str(args.shards), "--train-tokenizer", "--vocab-size", "8192"],
                       cwd=ROOT, check=True)
    vocab = json.loads((args.shards / "manifest.json").read_text())["tokenizer"]["vocab_size"]
    results = []
    for config in CONFIGS:
        cfg = load_config(ROOT / config)
        loader = loader_tokens_per_sec(args.shards, cfg.model.block_size, cfg.train.micro_batch_size,
                                       args.seconds)
        trainer = trainer_tokens_per_sec(args.shards, config, vocab, args.steps)
        results.append({"config": config, "block_size": cfg.model.block_size,
                        "micro_batch": cfg.train.micro_batch_size, "loader_tokens_per_s": loader,
                        "trainer_tokens_per_s": trainer, "ratio": loader / trainer})
    out = {"bench": "loader_vs_trainer", "date": str(date.today()), "device": platform.processor() or "cpu",
           "threads": torch.get_num_threads(), "shards": str(args.shards), "results": results}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))
    print(f"{'config':<22}{'loader tokens/s':>17}{'trainer tokens/s':>18}{'ratio':>9}")
    for r in results:
        print(f"{r['config']:<22}{r['loader_tokens_per_s']:>17,.0f}{r['trainer_tokens_per_s']:>18,.0f}"
              f"{r['ratio']:>8.0f}x")
    print(f"results: {args.json}")


if __name__ == "__main__":
    main()
