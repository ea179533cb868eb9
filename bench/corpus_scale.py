"""How a corpus build's memory and time grow with the corpus: 1 rank on 40, 160 and 640 MB.

    python bench/corpus_scale.py [--sizes 40 160 640] [--ranks 1] [--json OUT.json]

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

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.process_memory import run_measured  # noqa: E402
from bench.report import save_results  # noqa: E402
from megagpt.tokenizer import Tokenizer  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[40, 160, 640], help="corpus sizes in MB")
    parser.add_argument("--ranks", type=int, default=1, help="MPI ranks a build (1: a plain process)")
    parser.add_argument("--baseline", type=Path, help="an earlier checkout to compare with")
    parser.add_argument("--baseline-max", type=int, default=160, help="largest size the baseline builds")
    parser.add_argument("--json", default=str(ROOT / f"bench/results/corpus_scale-{date.today()}.json"))
    args = parser.parse_args()
    bin_dir = os.path.dirname(sys.executable)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": bin_dir + os.pathsep + os.environ["PATH"]}
    pool = sentences()
    runs = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        truth = json.loads((ROOT / "data/sample/ground-truth.json").read_text())
        tok = Tokenizer.train([p["articleBody"] for p in truth.values()], Path(tmp) / "tok.model", 8192)
        for size in args.sizes:
            corpus = Path(tmp) / f"webtext-{size}mb.jsonl"
            documents = write_corpus(corpus, size, pool)
            megabytes = corpus.stat().st_size / 1e6
            checkouts = [("new", ROOT)]
            if args.baseline and size <= args.baseline_max:
                checkouts.append(("baseline", args.baseline.resolve()))
            for name, checkout in checkouts:
                launcher = [os.path.join(bin_dir, "mpiexec"), "-n", str(args.ranks)] if args.ranks > 1 else []
                out = Path(tmp) / f"out-{name}-{size}"
                command = [*launcher, sys.executable, "-m", "pipelines.build", "--input", str(corpus),
                           "--output", str(out), "--tokenizer", str(tok.path), "--workers", "1"]
                print(f"{name}: {' '.join(command[-10:])}  ({megabytes:.0f} MB, {documents} documents)",
                      flush=True)
                run = run_measured(command, {**env, "PYTHONPATH": str(checkout)}, checkout)
                manifest = json.loads((out / "manifest.json").read_text())
                run.update(code=name, megabytes=megabytes, documents=documents,
                           kept=manifest["stages"]["split"]["in"],
                           tokens=manifest["tokens"] + manifest.get("valid", {}).get("tokens", 0),
                           mb_per_s_per_core=megabytes / run["seconds"] / args.ranks)
                runs.append(run)
                shutil.rmtree(out)
            corpus.unlink()
    print(f"{'code':<9}{'MB':>6}{'documents':>11}{'kept':>9}{'seconds':>9}{'CPU s':>8}{'MB/s/core':>11}"
          f"{'peak RSS MiB':>14}")
    for r in runs:
        print(f"{r['code']:<9}{r['megabytes']:>6.0f}{r['documents']:>11}{r['kept']:>9}{r['seconds']:>9.1f}"
              f"{r['cpu_seconds']:>8.1f}{r['mb_per_s_per_core']:>11.2f}{max(r['peak_rss_mib']):>14.0f}")
    ours = [r for r in runs if r["code"] == "new"]
    for r in (r for r in runs if r["code"] == "baseline"):
        same = next(o for o in ours if o["megabytes"] == r["megabytes"])
        print(f"{r['megabytes']:.0f} MB: {r['seconds'] / same['seconds']:.2f}x the baseline's speed, "
              f"{max(same['peak_rss_mib']) / max(r['peak_rss_mib']):.2f}x its peak memory")
    runs = ours + [r for r in runs if r["code"] == "baseline"]
    growth = max(ours[-1]["peak_rss_mib"]) / max(ours[0]["peak_rss_mib"])
    print(f"peak RSS at {ours[-1]['megabytes']:.0f} MB / at {ours[0]['megabytes']:.0f} MB: {growth:.2f}x "
          f"(goal <= 1.30x for 4x the corpus)")
    save_results(args.json, {"ranks": args.ranks, "runs": runs, "peak_rss_growth": growth})


if __name__ == "__main__":
    main()
