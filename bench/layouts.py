"""What is the step time of each dp x pp x tp layout of train.py on this machine (same model and batch)?

    python -m bench.layouts [--steps 20] [--only one_process tp2 ...] [--json FILE]

Each layout is a real launch of megagpt/train.py (as the tests launch it) on a small corpus built
from the bundled pages; the step time is the median of 1 / tokens_per_sec x tokens per step over
the logged steps after the first. On a CPU the layouts only show communication overhead: tp and
pp exist for memory and for GPUs' fast links, not for speed on 2 cores.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench import harness
from pipelines.build import build
from tests.parallel.conftest import LAYOUTS
from tests.train.conftest import ROOT, read_metrics, run_training

CONFIG = "configs/tiny.yaml, global batch 8 x 32 tokens"


def measure(layouts: list[str], steps: int) -> list[dict]:
    """Each layout's median step time, from a real launch of train.py on a small corpus."""
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "shards"
        pages = sorted((ROOT / "data/sample/html").glob("*.html.gz"))[:30]
        build(pages, corpus, vocab_size=512, valid_fraction=0.1, min_chars=200, seed=0)
        rows = []
        for name in layouts:
            launcher, nproc, overrides = LAYOUTS[name]
            run = Path(tmp) / name
            run_training(run, corpus, *overrides, f"train.max_steps={steps}", "log.interval=1",
                         "eval.interval=0", "sample.max_new_tokens=0", "train.resume=never",
                         launcher=launcher, nproc=nproc, timeout=900)
            tps = [m["tokens_per_sec"] for m in read_metrics(run) if "loss" in m][1:]
            tokens = 8 * 32  # global batch x block_size of configs/tiny.yaml in every layout
            rows.append({"layout": name, "launcher": launcher, "processes": nproc,
                         "step_ms": 1000 * statistics.median(tokens / t for t in tps)})
    return rows


def summarize(settings: dict[str, Any], figures: dict[str, Any]) -> harness.Result:
    """The harness result of a run: `figures` holds rows (one a layout)."""
    table = harness.Table(["layout", "launcher", "procs", "ms/step"])
    for r in figures["rows"]:
        table.add(r["layout"], r["launcher"], r["processes"], round(r["step_ms"], 1))
    return harness.Result(question=harness.question_of(__doc__), settings=settings, figures=figures,
                          table=table, reference="the one_process layout, when run")


def main() -> None:
    p = harness.parser(__doc__)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--only", nargs="*", default=list(LAYOUTS), help="layouts to run (default: all)")
    args = p.parse_args()
    settings = {"steps": args.steps, "layouts": args.only, "config": CONFIG}
    harness.report("layouts", summarize(settings, {"rows": measure(args.only, args.steps)}), args.json)


if __name__ == "__main__":
    main()
