"""Is the logged tokens/s the training rate, with evaluation and checkpoints between log lines?

    python -m bench.logged_throughput [--baseline CHECKOUT] [--repeats 3] [--json FILE]

A run with evaluation and checkpoints between its log lines against the same run without them.
Both runs train configs/tiny.yaml on 2 ZeRO-3 ranks with the same data; one evaluates 20 held-out
micro-batches and saves a checkpoint at every log line. The ratio of their mean logged tokens/s
should be 1 (within noise): the trainer times its steps, not the wall clock between log lines.
With --baseline (an older checkout of megagpt), the same pair runs on its trainer too, in the same
session, alternating, so both see the same machine load.
"""

from __future__ import annotations

import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench import harness
from bench.harness import ROOT
from pipelines.build import build
from tests.train.conftest import read_metrics, training_command

COMMON = ("train.max_steps=60", "log.interval=10", "sample.max_new_tokens=0", "train.resume=never",
          "eval.batches=20")
SIDE_TASKS = {"with eval and saves": ("eval.interval=10", "checkpoint.interval=10"),
              "training only": ("eval.interval=0", "checkpoint.interval=0")}
NOISE = 0.1  # the ratio counts as 1 within this


def mean_tokens_per_sec(checkout: Path, corpus: Path, run: Path, overrides: tuple[str, ...]) -> float:
    """Train with `checkout`'s megagpt/train.py (2 ranks, deepspeed launcher); its mean logged rate."""
    cmd, env = training_command(run, corpus, *COMMON, *overrides)
    proc = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode:
        raise RuntimeError(f"{checkout}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    rates = [m["tokens_per_sec"] for m in read_metrics(run) if "loss" in m][1:]  # the first warms up
    return statistics.mean(rates)


def measure(trainers: dict[str, Path], repeats: int) -> dict[str, dict[str, list[float]]]:
    """Each trainer's mean logged tokens/s with and without the side tasks, `repeats` runs each."""
    rates: dict[str, dict[str, list[float]]] = {t: {k: [] for k in SIDE_TASKS} for t in trainers}
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "shards"
        pages = sorted((ROOT / "data/sample/html").glob("*.html.gz"))[:30]
        build(pages, corpus, vocab_size=512, valid_fraction=0.1, min_chars=200, seed=0)
        for repeat in range(repeats):
            for trainer, checkout in trainers.items():
                for kind, overrides in SIDE_TASKS.items():
                    run = Path(tmp) / f"{trainer}-{kind.replace(' ', '_')}-{repeat}"
                    rates[trainer][kind].append(mean_tokens_per_sec(checkout, corpus, run, overrides))
    return rates


def summarize(settings: dict[str, Any], figures: dict[str, Any]) -> harness.Result:
    """The harness result of a run: `figures` holds results (one a trainer, with its runs)."""
    table = harness.Table(["trainer", "with eval+saves tokens/s", "training only tokens/s", "ratio"])
    for r in figures["results"]:
        table.add(r["trainer"], round(r["tokens_per_sec_with_eval_and_saves"]),
                  round(r["tokens_per_sec_training_only"]), round(r["ratio"], 2))
    this = next(r for r in figures["results"] if r["trainer"] == "this")
    return harness.Result(
        question=harness.question_of(__doc__), settings=settings, figures=figures, table=table,
        reference="the same training run without evaluation and saves; with --baseline, an older trainer",
        goal=harness.Goal(f"this trainer's ratio 1 within {NOISE:.0%} (noise)",
                          abs(this["ratio"] - 1) <= NOISE))


def main() -> None:
    p = harness.parser(__doc__)
    p.add_argument("--baseline", type=Path, help="an older megagpt checkout to measure the same way")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    trainers = {"this": ROOT, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    rates = measure(trainers, args.repeats)
    rows = []
    for trainer, by_kind in rates.items():
        with_tasks, alone = (statistics.median(by_kind[k]) for k in SIDE_TASKS)
        rows.append({"trainer": trainer, "tokens_per_sec_with_eval_and_saves": with_tasks,
                     "tokens_per_sec_training_only": alone, "ratio": with_tasks / alone, "runs": by_kind})
    settings = {"config": "configs/tiny.yaml, 2 ZeRO-3 ranks", "common": list(COMMON),
                "side_tasks": {k: list(v) for k, v in SIDE_TASKS.items()}, "repeats": args.repeats,
                "baseline": args.baseline and str(args.baseline)}
    harness.report("logged_throughput", summarize(settings, {"results": rows}), args.json)


if __name__ == "__main__":
    main()
