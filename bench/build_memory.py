"""How much memory does a JSON-lines build need, given or training its tokenizer, as the corpus grows 4x?

    python -m bench.build_memory [--sizes 10 40] [--tokenizer-sample 2000] [--baseline CHECKOUT]
                                 [--json OUT.json]

The corpora are bench/corpus_scale.py's WebText-like JSON lines (documents of about 4 KB of real
LAMBADA and WikiText-2 sentences, written here, never committed). Each is built twice, one process
(`--workers 1`): with `--tokenizer TOK` (trained beforehand on the bundled pages) and with
`--train-tokenizer --vocab-size 8192 --tokenizer-sample N`, N small enough that every size fills
the sample (the sample is what bounds the training's memory, not the corpus). Peak resident memory
is sampled for every Python process of the build: the build itself and, with --train-tokenizer, the
child that trains. With `--baseline CHECKOUT` (a `git worktree` of an earlier commit) the same
builds of that checkout run at the smallest size, in the same run: the reference.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import harness
from bench._process_memory import run_measured
from bench.corpus_scale import sentences, write_corpus
from bench.harness import ROOT
from megagpt.formats.tokenizer import Tokenizer

GOALS_MIB = {"given tokenizer": 150, "--train-tokenizer": 300}


def one_build(code: str, checkout: Path, corpus: Path, how: str, options: list[str],
              env: dict[str, str]) -> dict:
    """One measured build: the build process's peak and the largest of its children's."""
    out = corpus.parent / f"out-{code}-{corpus.stem}"
    command = [sys.executable, "-m", "pipelines.build", "--input", str(corpus), "--output", str(out),
               "--workers", "1", *options]
    print(f"{code} {how}: {' '.join(command[3:])}", flush=True)
    run = run_measured(command, {**env, "PYTHONPATH": str(checkout)}, checkout, match="")
    manifest = json.loads((out / "manifest.json").read_text())
    shutil.rmtree(out)
    peaks = run["peak_rss_mib"]  # by process id: the build first, then what it started
    return {"code": code, "how": how, "seconds": run["seconds"], "cpu_seconds": run["cpu_seconds"],
            "build_peak_mib": peaks[0], "child_peak_mib": max(peaks[1:], default=None),
            "peak_mib": max(peaks), "documents": manifest["documents"]}


def measure(args) -> list[dict]:
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    runs = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        truth = json.loads((ROOT / "data/sample/ground-truth.json").read_text())
        tok = Tokenizer.train([p["articleBody"] for p in truth.values()], Path(tmp) / "tok.model", 8192)
        hows = {"given tokenizer": ["--tokenizer", str(tok.path)],
                "--train-tokenizer": ["--train-tokenizer", "--vocab-size", "8192",
                                      "--tokenizer-sample", str(args.tokenizer_sample)]}
        pool = sentences()
        for size in args.sizes:
            corpus = Path(tmp) / f"webtext-{size}mb.jsonl"
            documents = write_corpus(corpus, size, pool)
            megabytes = corpus.stat().st_size / 1e6
            print(f"{megabytes:.0f} MB, {documents} documents", flush=True)
            checkouts = [("new", ROOT)]
            if args.baseline and size == args.sizes[0]:
                checkouts.append(("baseline", args.baseline.resolve()))
            for code, checkout in checkouts:
                for how, options in hows.items():
                    run = one_build(code, checkout, corpus, how, options, env)
                    runs.append(run | {"megabytes": megabytes, "input_documents": documents})
            corpus.unlink()
    return runs


def summarize(settings: dict[str, Any], figures: dict[str, Any]) -> harness.Result:
    runs = figures["runs"]
    table = harness.Table(["code", "build", "MB", "build process MiB", "child MiB", "peak MiB", "CPU s",
                           "MB/CPU s"])
    for r in runs:
        table.add(r["code"], r["how"], round(r["megabytes"]), round(r["build_peak_mib"]),
                  None if r["child_peak_mib"] is None else round(r["child_peak_mib"]), round(r["peak_mib"]),
                  round(r["cpu_seconds"], 1), round(r["megabytes"] / r["cpu_seconds"], 2))
    ours = [r for r in runs if r["code"] == "new"]
    growth, met = {}, True
    for how, goal in GOALS_MIB.items():
        mine = [r for r in ours if r["how"] == how]
        growth[how] = mine[-1]["peak_mib"] / mine[0]["peak_mib"]
        met &= all(r["peak_mib"] <= goal for r in mine) and growth[how] <= 1.3
    figures["peak_growth"] = growth
    return harness.Result(
        question=harness.question_of(__doc__), settings=settings, figures=figures, table=table,
        reference="with --baseline: the earlier checkout's builds of the smallest corpus, in the same run",
        goal=harness.Goal("every process <= 150 MiB with a given tokenizer and <= 300 MiB with "
                          "--train-tokenizer; the peak within 1.3x when the corpus grows 4x", met))


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 40], help="corpus sizes in MB")
    parser.add_argument("--tokenizer-sample", type=int, default=2000,
                        help="documents the tokenizer is trained on (every size should fill it)")
    parser.add_argument("--baseline", type=Path, help="an earlier checkout to compare with")
    args = parser.parse_args()
    settings = {"sizes_mb": args.sizes, "workers": 1, "vocab_size": 8192,
                "tokenizer_sample": args.tokenizer_sample, "baseline": args.baseline and str(args.baseline)}
    harness.report("build_memory", summarize(settings, {"runs": measure(args)}), args.json)


if __name__ == "__main__":
    main()
