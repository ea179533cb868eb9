"""Is the logged tokens/s the training rate? A run with evaluation and checkpoints between its log
lines against the same run without them.

    python bench/logged_throughput.py [--baseline CHECKOUT] [--repeats 3] [--json FILE]

Both runs train configs/tiny.yaml on 2 ZeRO-3 ranks with the same data; one evaluates 20 held-out
micro-batches and saves a checkpoint at every log line. The ratio of their mean logged tokens/s
should be 1 (within noise): the trainer times its steps, not the wall clock between log lines.
With --baseline (an older checkout of megagpt), the same pair runs on its trainer too, in the same
session, alternating, so both see the same machine load.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.report import save_results  # noqa: E402
from pipelines.build import build  # noqa: E402
from tests.train.conftest import read_metrics, training_command  # noqa: E402

COMMON = ("train.max_steps=60", "log.interval=10", "sample.max_new_tokens=0", "train.resume=never",
          "eval.batches=20")
SIDE_TASKS = {"with eval and saves": ("eval.interval=10", "checkpoint.interval=10"),
              "training only": ("eval.interval=0", "checkpoint.interval=0")}


def mean_tokens_per_sec(checkout: Path, corpus: Path, run: Path, overrides: tuple[str, ...]) -> float:
    """Train with `checkout`'s megagpt/train.py (2 ranks, deepspeed launcher); its mean logged rate."""
    cmd, env = training_command(run, corpus, *COMMON, *overrides)
    proc = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode:
        raise RuntimeError(f"{checkout}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    rates = [m["tokens_per_sec"] for m in read_metrics(run) if "loss" in m][1:]  # the first warms up
    return statistics.mean(rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", type=Path, help="an older megagpt checkout to measure the same way")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=f"bench/results/logged_throughput-{date.today()}.json")
    args = p.parse_args()
    trainers = {"this": ROOT, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    rates: dict[str, dict[str, list[float]]] = {t: {k: [] for k in SIDE_TASKS} for t in trainers}
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "shards"
        pages = sorted((ROOT / "data/sample/html").glob("*.html.gz"))[:30]
        build(pages, corpus, vocab_size=512, valid_fraction=0.1, min_chars=200, seed=0)
        for repeat in range(args.repeats):
            for trainer, checkout in trainers.items():
                for kind, overrides in SIDE_TASKS.items():
                    run = Path(tmp) / f"{trainer}-{kind.replace(' ', '_')}-{repeat}"
                    rates[trainer][kind].append(mean_tokens_per_sec(checkout, corpus, run, overrides))
    rows = []
    for trainer, by_kind in rates.items():
        with_tasks, alone = (statistics.median(by_kind[k]) for k in SIDE_TASKS)
        rows.append({"trainer": trainer, "tokens_per_sec_with_eval_and_saves": with_tasks,
                     "tokens_per_sec_training_only": alone, "ratio": with_tasks / alone, "runs": by_kind})
    save_results(args.json, {"bench": "logged_throughput", "date": str(date.today()), "results": rows})
    print(f"{'trainer':<10}{'with eval+saves':>18}{'training only':>16}{'ratio':>8}")
    for r in rows:
        print(f"{r['trainer']:<10}{r['tokens_per_sec_with_eval_and_saves']:>18,.0f}"
              f"{r['tokens_per_sec_training_only']:>16,.0f}{r['ratio']:>8.2f}")


if __name__ == "__main__":
    main()
