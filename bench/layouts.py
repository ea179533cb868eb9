"""Step time of each dp x pp x tp layout of train.py on this machine, same model and global batch.

    python bench/layouts.py [--steps 20] [--only one_process tp2 ...] [--json FILE]

Each layout is a real launch of megagpt/train.py (as the tests launch it) on a small corpus built
from the bundled pages; the step time is the median of 1 / tokens_per_sec x tokens per step over
the logged steps after the first. On a CPU the layouts only show communication overhead: tp and
pp exist for memory and for GPUs' fast links, not for speed on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipelines.build import build  # noqa: E402
from tests.parallel.conftest import LAYOUTS  # noqa: E402
from tests.train.conftest import ROOT, read_metrics, run_training  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--only", nargs="*", default=list(LAYOUTS), help="layouts to run (default: all)")
    p.add_argument("--json", default=f"bench/results/layouts-{date.today()}.json")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "shards"
        pages = sorted((ROOT / "data/sample/html").glob("*.html.gz"))[:30]
        build(pages, corpus, vocab_size=512, valid_fraction=0.1, min_chars=200, seed=0)
        rows = []
        for name in args.only:
            launcher, nproc, overrides = LAYOUTS[name]
            run = Path(tmp) / name
            run_training(run, corpus, *overrides, f"train.max_steps={args.steps}", "log.interval=1",
                         "eval.interval=0", "sample.max_new_tokens=0", "train.resume=never",
                         launcher=launcher, nproc=nproc, timeout=900)
            tps = [m["tokens_per_sec"] for m in read_metrics(run) if "loss" in m][1:]
            tokens = 8 * 32  # global batch x block_size of configs/tiny.yaml in every layout
            rows.append({"layout": name, "launcher": launcher, "processes": nproc,
                         "step_ms": 1000 * statistics.median(tokens / t for t in tps)})
    result = {"date": str(date.today()), "machine": platform.processor() or platform.machine(),
              "cores": len(os.sched_getaffinity(0)), "steps": args.steps,
              "config": "configs/tiny.yaml, global batch 8 x 32 tokens", "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'layout':<16} {'launcher':<10} {'procs':>5} {'ms/step':>9}")
    for r in rows:
        print(f"{r['layout']:<16} {r['launcher']:<10} {r['processes']:>5} {r['step_ms']:>9.1f}")
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
