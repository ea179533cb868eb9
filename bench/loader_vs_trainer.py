"""Is the data loader fast enough never to be the trainer's bottleneck (tokens/s of each, one run)?

    python -m bench.loader_vs_trainer [--shards data/shards] [--steps 10] [--seconds 3] [--json OUT.json]

The loader side is megagpt.training.data's reader (shards -> packed windows -> this rank's micro-batch) as
the trainer uses it; the trainer side is a forward + backward + AdamW step of the model of each
config on those very batches, in one process. The ratio says how far the loader is from being
the bottleneck (goal: >= 20x). The shard folder defaults to the demo corpus and is built from the
bundled pages when missing.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench import harness
from bench.harness import ROOT
from megagpt.config import load_config
from megagpt.model.gpt import GPT
from megagpt.training.data import RankBatches, open_dataset

CONFIGS = ["configs/tiny.yaml", "configs/demo.yaml"]
GOAL = 20  # the loader at least this many times the trainer's tokens/s


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


def summarize(settings: dict[str, Any], figures: dict[str, Any]) -> harness.Result:
    """The harness result of a run: `figures` holds results (one a config)."""
    table = harness.Table(["config", "loader tokens/s", "trainer tokens/s", "ratio"])
    for r in figures["results"]:
        table.add(r["config"], round(r["loader_tokens_per_s"]), round(r["trainer_tokens_per_s"]),
                  f"{r['ratio']:.0f}x")
    return harness.Result(
        question=harness.question_of(__doc__), settings=settings, figures=figures, table=table,
        reference="a forward + backward + AdamW step of each config's model on the same batches",
        goal=harness.Goal(f"the loader >= {GOAL}x the trainer's tokens/s at every config",
                          all(r["ratio"] >= GOAL for r in figures["results"])))


def main() -> None:
    p = harness.parser(__doc__)
    p.add_argument("--shards", type=Path, default=ROOT / "data/shards")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seconds", type=float, default=3.0, help="time to draw batches for")
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
    settings = {"shards": str(args.shards), "steps": args.steps, "seconds": args.seconds,
                "threads": torch.get_num_threads(), "device": "cpu"}
    harness.report("loader_vs_trainer", summarize(settings, {"results": results}), args.json)


if __name__ == "__main__":
    main()
