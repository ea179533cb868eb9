"""How much memory and CPU time does a JSON-lines build need as the corpus grows 4x, beside datatrove?

    python -m bench.build_memory [--sizes 10 40] [--tokenizer-sample 2000] [--baseline CHECKOUT]
                                 [--no-datatrove] [--json OUT.json]

The corpora are bench/corpus_scale.py's WebText-like JSON lines (documents of about 4 KB of real
LAMBADA and WikiText-2 sentences, written here, never committed). Each is built twice, one process
(`--workers 1`): with `--tokenizer TOK` (trained beforehand on the bundled pages) and with
`--train-tokenizer --vocab-size 8192 --tokenizer-sample N`, N small enough that every size fills
the sample (the sample is what bounds the training's memory, not the corpus). Peak resident memory
is sampled for every Python process of the build: the build itself and, with --train-tokenizer, the
child that trains. With `--baseline CHECKOUT` (a `git worktree` of an earlier commit) the same
builds of that checkout run at the smallest size, in the same run: the reference.

The contender: datatrove's closest equivalent of the build, bench/_datatrove_build.py (JsonlReader ->
FTFYFormatter with megagpt's ftfy settings -> a LambdaFilter with megagpt's length, letters and
domain rules -> its four MinHash dedup stages, default config -> DocumentTokenizer), one process,
run and measured the same way (peak resident memory of every Python process, CPU seconds summed
over them) on the same corpus, with megagpt's tokenizer converted to a `tokenizers` file (same
vocabulary and merges: same ids for 179 of the 181 bundled pages). It does less than megagpt's
build: no exact dedup, no whitespace normalisation, no train/valid split, a token file instead of
shards; its MinHash is unverified, 112 values of 5-grams of its English word tokenizer's words
(bench/_datatrove_build.py says what differs). megagpt's MB per CPU second is reported as a ratio to
datatrove's at each size; the goal: the given-tokenizer build >= 1.5 MB per CPU second at every size
(CPU seconds of the whole process: start, imports and all). With `--no-datatrove`, or
without datatrove (`pip install datatrove spacy orjson`: the bench's environment only), megagpt
alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import harness
from bench._process_memory import run_measured
from bench.corpus_scale import bench_tokenizer, corpora
from bench.harness import ROOT

GOALS_MIB = {"given tokenizer": 150, "--train-tokenizer": 300}
GOAL_MB_PER_CPU_S = 1.5
DATATROVE = "datatrove"
DATATROVE_REFERENCE = (
    "datatrove 0.10's closest equivalent of the build (bench/_datatrove_build.py): JsonlReader, "
    "FTFYFormatter with megagpt's ftfy settings, a LambdaFilter of megagpt's rules, its four MinHash stages "
    "(default 14x8 of 112, no verification), DocumentTokenizer with megagpt's tokenizer converted to a "
    "`tokenizers` file, no shuffle; one process, measured as megagpt's builds on the same corpus in the same "
    "run. It does no exact dedup, no whitespace normalisation, no train/valid split and writes one token "
    "file, not shards and manifests")


def one_build(code: str, how: str, command: list[str], checkout: Path, out: Path,
              env: dict[str, str]) -> dict:
    """One measured build writing `out`: the build process's peak and the largest of its children's."""
    print(f"{code} {how}: {' '.join(command[3:])}", flush=True)
    run = run_measured(command, {**env, "PYTHONPATH": str(checkout)}, checkout, match="")
    if code == DATATROVE:  # what reached the token files
        counts = json.loads((out / "summary.json").read_text())
        counts["kept"] = counts.pop("documents")
    else:  # documents: the train split's, as before; kept: with the valid split's
        manifest = json.loads((out / "manifest.json").read_text())
        counts = {"documents": manifest["documents"], "kept": manifest["stages"]["split"]["in"],
                  "tokens": manifest["tokens"] + manifest.get("valid", {}).get("tokens", 0)}
    shutil.rmtree(out)
    peaks = run["peak_rss_mib"]  # by process id: the build first, then what it started
    return {"code": code, "how": how, "seconds": run["seconds"], "cpu_seconds": run["cpu_seconds"],
            "build_peak_mib": peaks[0], "child_peak_mib": max(peaks[1:], default=None),
            "peak_mib": max(peaks)} | counts


def datatrove_skipped(args) -> str | None:
    """Why datatrove is not run, or None."""
    if args.no_datatrove:
        return "datatrove not run: --no-datatrove"
    try:
        import datatrove  # noqa: F401
        import orjson  # noqa: F401  (datatrove's JsonlReader)
        import spacy  # noqa: F401  (datatrove's English word tokenizer)
    except ImportError as err:
        return f"datatrove not run: {err} (pip install datatrove spacy orjson: the bench's environment only)"
    return None


def measure(args, skipped: str | None) -> list[dict]:
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    runs = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        tok = bench_tokenizer(Path(tmp))
        hows = {"given tokenizer": ["--tokenizer", str(tok.path)],
                "--train-tokenizer": ["--train-tokenizer", "--vocab-size", "8192",
                                      "--tokenizer-sample", str(args.tokenizer_sample)]}
        if not skipped:  # megagpt's tokenizer as a `tokenizers` file, made before any measurement
            converted = Path(tmp) / "tok.json"
            subprocess.run([sys.executable, "-m", "bench._datatrove_build", "--convert", str(tok.path),
                            "--tokenizer", str(converted)], env={**env, "PYTHONPATH": str(ROOT)}, check=True)
        for size, corpus, documents in corpora(Path(tmp), args.sizes):
            megabytes = corpus.stat().st_size / 1e6
            checkouts = [("new", ROOT)]
            if args.baseline and size == args.sizes[0]:
                checkouts.append(("baseline", args.baseline.resolve()))
            builds = []
            for code, checkout in checkouts:
                for how, options in hows.items():
                    out = corpus.parent / f"out-{code}-{corpus.stem}"
                    builds.append((code, how, checkout, out, [
                        sys.executable, "-m", "pipelines.build", "--input", str(corpus), "--output", str(out),
                        "--workers", "1", *options]))
            if not skipped:
                out = corpus.parent / f"out-{DATATROVE}-{corpus.stem}"
                builds.append((DATATROVE, "given tokenizer", ROOT, out, [
                    sys.executable, "-m", "bench._datatrove_build", "--input", str(corpus),
                    "--output", str(out), "--tokenizer", str(converted)]))
            for code, how, checkout, out, command in builds:
                run = one_build(code, how, command, checkout, out, env)
                runs.append(run | {"megabytes": megabytes, "input_documents": documents})
    return runs


def summarize(settings: dict[str, Any], figures: dict[str, Any]) -> harness.Result:
    runs = figures["runs"]
    table = harness.Table(["code", "build", "MB", "build process MiB", "child MiB", "peak MiB", "CPU s",
                           "MB/CPU s", "vs datatrove", "kept"])
    for r in runs:
        r["mb_per_cpu_s"] = r["megabytes"] / r["cpu_seconds"]
    theirs = {r["megabytes"]: r["mb_per_cpu_s"] for r in runs if r["code"] == DATATROVE}
    for r in runs:
        reference = theirs.get(r["megabytes"])
        r["speed_vs_datatrove"] = reference and r["mb_per_cpu_s"] / reference
        table.add(r["code"], r["how"], round(r["megabytes"]), round(r["build_peak_mib"]),
                  None if r["child_peak_mib"] is None else round(r["child_peak_mib"]), round(r["peak_mib"]),
                  round(r["cpu_seconds"], 1), round(r["mb_per_cpu_s"], 2),
                  reference and f"{r['speed_vs_datatrove']:.2f}x", r["kept"])
    ours = [r for r in runs if r["code"] == "new"]
    growth, memory_met = {}, True
    for how, goal in GOALS_MIB.items():
        mine = [r for r in ours if r["how"] == how]
        growth[how] = mine[-1]["peak_mib"] / mine[0]["peak_mib"]
        memory_met &= all(r["peak_mib"] <= goal for r in mine) and growth[how] <= 1.3
    figures["peak_growth"] = growth
    speeds = {round(r["megabytes"]): r["mb_per_cpu_s"] for r in ours if r["how"] == "given tokenizer"}
    speed_met = all(v >= GOAL_MB_PER_CPU_S for v in speeds.values())
    figures["goals_met"] = {"memory": memory_met, "throughput": speed_met}
    verdict = {True: "met", False: "NOT met"}
    reference = (DATATROVE_REFERENCE if theirs else figures.get("skipped") or "no datatrove run")
    reference += "; with --baseline: the earlier checkout's builds of the smallest corpus, in the same run"
    return harness.Result(
        question=harness.question_of(__doc__), settings=settings, figures=figures, table=table,
        reference=reference,
        goal=harness.Goal(
            f"every process <= 150 MiB with a given tokenizer and <= 300 MiB with --train-tokenizer, the "
            f"peak within 1.3x when the corpus grows 4x ({verdict[memory_met]}); a given-tokenizer build >= "
            f"{GOAL_MB_PER_CPU_S} MB per CPU second at every size ({verdict[speed_met]}: "
            + ", ".join(f"{v:.2f} at {mb} MB" for mb, v in speeds.items()) + ")",
            memory_met and speed_met))


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 40], help="corpus sizes in MB")
    parser.add_argument("--tokenizer-sample", type=int, default=2000,
                        help="documents the tokenizer is trained on (every size should fill it)")
    parser.add_argument("--baseline", type=Path, help="an earlier checkout to compare with")
    parser.add_argument("--no-datatrove", action="store_true", help="measure megagpt's builds only")
    args = parser.parse_args()
    skipped = datatrove_skipped(args)
    if skipped:
        print(skipped, flush=True)
    settings = {"sizes_mb": args.sizes, "workers": 1, "vocab_size": 8192,
                "tokenizer_sample": args.tokenizer_sample, "baseline": args.baseline and str(args.baseline),
                "datatrove": not skipped}
    figures = {"runs": measure(args, skipped), "skipped": skipped}
    harness.report("build_memory", summarize(settings, figures), args.json)


if __name__ == "__main__":
    main()
