"""How do a corpus build's peak memory and time grow with the corpus (40, 160 and 640 MB)?

    python -m bench.corpus_scale [--sizes 40 160 640] [--ranks 1] [--baseline CHECKOUT] [--json OUT.json]

The corpora are WebText-like JSON lines written here (never committed): documents of about 4 KB
made of real sentences drawn with a seeded generator from the bundled LAMBADA passages and
WikiText-2 test set, so that text statistics are real and documents are distinct. Each build is
`python -m pipelines.build --input CORPUS.jsonl --tokenizer TOK --workers 1` (one process: one
core), with a tokenizer trained beforehand on the bundled pages so every build does the same work.
Reports peak resident memory of the build process, MB/s a core, and the ratio of peak memory at
the largest size to the smallest (the goal: flat within 30% for a 4x larger corpus). With
`--baseline CHECKOUT` (e.g. a `git worktree` of an earlier commit) the same builds of that checkout
run right after each, on the same corpus, for sizes up to `--baseline-max` MB: the reference the
ratios are taken against, in the same run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bench import harness
from bench._process_memory import run_measured
from bench.harness import ROOT
from megagpt.formats.tokenizer import Tokenizer

DOC_BYTES = 4000


def sentences() -> list[str]:
    lambada = [json.loads(line)["text"] for line in
               (ROOT / "data/eval/lambada/lambada_test.jsonl").read_text().splitlines()]
    wiki = (ROOT / "data/eval/wikitext-2-raw/wiki.test.raw").read_text().splitlines()
    prose = [line for line in wiki if line.strip() and not line.startswith(" =")]  # no headings
    text = " ".join(lambada + prose)
    return [s for s in re.split(r"(?<=[.!?])\s+", text) if len(s) > 20]


def write_corpus(path: Path, megabytes: int, pool: list[str], seed: int = 0) -> int:
    """About `megabytes` MB of ~4 KB documents of sentences drawn from `pool`; returns documents."""
    rng = np.random.default_rng(seed)
    lengths = np.array([len(s) + 1 for s in pool])
    written = documents = 0
    with path.open("w") as out:
        while written < megabytes * 1e6:
            picks = rng.integers(0, len(pool), 4 * DOC_BYTES // int(lengths.mean()))
            stop = int(np.searchsorted(np.cumsum(lengths[picks]), DOC_BYTES)) + 1
            paragraphs = [" ".join(pool[i] for i in picks[j : j + 8]) for j in range(0, stop, 8)]
            line = json.dumps({"text": "\n\n".join(paragraphs), "url": f"https://example.com/{documents}"})
            out.write(line + "\n")
            written, documents = written + len(line) + 1, documents + 1
    return documents


def bench_tokenizer(folder: Path, vocab_size: int = 8192) -> Tokenizer:
    """The corpus benches' tokenizer: a BPE of `vocab_size` trained on the bundled sample pages'
    text (data/sample/ground-truth.json), written to `folder`/tok.model, so every build does the
    same work without training one."""
    truth = json.loads((ROOT / "data/sample/ground-truth.json").read_text())
    return Tokenizer.train([p["articleBody"] for p in truth.values()], folder / "tok.model", vocab_size)


def corpora(folder: Path, sizes: Iterable[int]) -> Iterator[tuple[int, Path, int]]:
    """For each size in MB: (size, path, documents) of a corpus written to `folder`, deleted when
    the next is asked for (one corpus on disk at a time)."""
    pool = sentences()
    for size in sizes:
        corpus = folder / f"webtext-{size}mb.jsonl"
        documents = write_corpus(corpus, size, pool)
        print(f"{corpus.stat().st_size / 1e6:.0f} MB, {documents} documents", flush=True)
        try:
            yield size, corpus, documents
        finally:
            corpus.unlink()


def one_build(name: str, checkout: Path, corpus: Path, tok: Path, ranks: int, env: dict[str, str]) -> dict:
    """One measured build of `corpus` by the code in `checkout`: time, memory, what it kept."""
    bin_dir = os.path.dirname(sys.executable)
    launcher = [os.path.join(bin_dir, "mpiexec"), "-n", str(ranks)] if ranks > 1 else []
    out = corpus.parent / f"out-{name}-{corpus.stem}"
    command = [*launcher, sys.executable, "-m", "pipelines.build", "--input", str(corpus),
               "--output", str(out), "--tokenizer", str(tok), "--workers", "1"]
    print(f"{name}: {' '.join(command[-10:])}", flush=True)
    run = run_measured(command, {**env, "PYTHONPATH": str(checkout)}, checkout)
    manifest = json.loads((out / "manifest.json").read_text())
    shutil.rmtree(out)
    return {**run, "code": name, "kept": manifest["stages"]["split"]["in"],
            "tokens": manifest["tokens"] + manifest.get("valid", {}).get("tokens", 0)}


def measure(args) -> list[dict]:
    """Every build: ours at each size, the baseline's after it up to --baseline-max MB."""
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    runs = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        tok = bench_tokenizer(Path(tmp))
        for size, corpus, documents in corpora(Path(tmp), args.sizes):
            megabytes = corpus.stat().st_size / 1e6
            checkouts = [("new", ROOT)]
            if args.baseline and size <= args.baseline_max:
                checkouts.append(("baseline", args.baseline.resolve()))
            for name, checkout in checkouts:
                run = one_build(name, checkout, corpus, tok.path, args.ranks, env)
                run.update(megabytes=megabytes, documents=documents,
                           mb_per_s_per_core=megabytes / run["seconds"] / args.ranks)
                runs.append(run)
    return runs


def summarize(settings: dict[str, Any], figures: dict[str, Any]) -> harness.Result:
    """The harness result of a run: `figures` holds runs (one a build, code "new" or "baseline")."""
    ours = [r for r in figures["runs"] if r.get("code", "new") == "new"]
    baseline = [r for r in figures["runs"] if r.get("code") == "baseline"]
    table = harness.Table(["code", "MB", "documents", "kept", "seconds", "CPU s", "MB/s/core",
                           "peak RSS MiB"])
    for r in ours + baseline:
        table.add(r.get("code", "new"), round(r["megabytes"]), r["documents"], r["kept"],
                  round(r["seconds"], 1), round(r["cpu_seconds"], 1), round(r["mb_per_s_per_core"], 2),
                  round(max(r["peak_rss_mib"])))
    figures["against_baseline"] = []
    for r in baseline:
        same = next(o for o in ours if o["megabytes"] == r["megabytes"])
        figures["against_baseline"].append({
            "megabytes": r["megabytes"], "speed_vs_baseline": r["seconds"] / same["seconds"],
            "peak_memory_vs_baseline": max(same["peak_rss_mib"]) / max(r["peak_rss_mib"])})
    figures["runs"] = ours + baseline
    growth = figures["peak_rss_growth"] = max(ours[-1]["peak_rss_mib"]) / max(ours[0]["peak_rss_mib"])
    return harness.Result(
        question=harness.question_of(__doc__), settings=settings, figures=figures, table=table,
        reference="with --baseline: an earlier checkout's builds of the same corpora, in the same run",
        goal=harness.Goal("peak RSS at the largest corpus <= 1.30x that at the smallest",
                          growth <= 1.30 if len(ours) > 1 else None))


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[40, 160, 640], help="corpus sizes in MB")
    parser.add_argument("--ranks", type=int, default=1, help="MPI ranks a build (1: a plain process)")
    parser.add_argument("--baseline", type=Path, help="an earlier checkout to compare with")
    parser.add_argument("--baseline-max", type=int, default=160, help="largest size the baseline builds")
    args = parser.parse_args()
    settings = {"sizes_mb": args.sizes, "ranks": args.ranks, "workers": 1, "document_bytes": DOC_BYTES,
                "baseline": args.baseline and str(args.baseline), "baseline_max_mb": args.baseline_max}
    harness.report("corpus_scale", summarize(settings, {"runs": measure(args)}), args.json)


if __name__ == "__main__":
    main()
