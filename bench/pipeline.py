"""Whole corpus build throughput, 1 against 2 MPI ranks, on Debian's Python 3.11 HTML manual.

    python bench/pipeline.py [--ranks 1 2] [--json bench/results/pipeline-DATE.json]

Input: the HTML pages of the `python3.11-doc` package (about 530 pages, 50 MB), installed here
with apt-get when missing (needs root and the Debian mirror). Each run is
`mpiexec -n K python -m pipelines.build --input PAGES --tokenizer TOK --workers 1` (one process
a rank, so K is the cores used), with a tokenizer trained beforehand on the bundled sample pages so
that every run does the same work. Reports MB of raw HTML a second, the speed-up over one rank,
and checks that every run wrote the same manifest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.process_memory import run_measured  # noqa: E402
from megagpt.tokenizer import Tokenizer  # noqa: E402

DOCS = Path("/usr/share/doc/python3.11/html")


def ensure_docs() -> list[Path]:
    if not DOCS.is_dir():
        print("installing python3.11-doc with apt-get ...", flush=True)
        try:
            subprocess.run(["apt-get", "update", "-qq"], check=True)
            subprocess.run(["apt-get", "install", "-y", "-qq", "python3.11-doc"], check=True)
        except (OSError, subprocess.CalledProcessError) as err:
            sys.exit(f"bench/pipeline.py: cannot install python3.11-doc ({err}); run as root with a Debian "
                     "mirror, or install it yourself: apt-get install python3.11-doc")
    return sorted(DOCS.rglob("*.html"))  # the HTML pages only, not the reST sources beside them


def build(ranks: int, pages: list[Path], out: Path, tokenizer: Path, env: dict[str, str]) -> dict:
    """One timed corpus build of the manual on `ranks` MPI ranks: time, each rank's peak memory,
    manifest counts."""
    cmd = [os.path.join(os.path.dirname(sys.executable), "mpiexec"), "-n", str(ranks), sys.executable,
           "-m", "pipelines.build", "--input", *map(str, pages), "--output", str(out),
           "--tokenizer", str(tokenizer), "--workers", "1"]
    run = run_measured(cmd, env, ROOT)
    manifest = json.loads((out / "manifest.json").read_text())
    shutil.rmtree(out)
    return {**run, "documents": manifest["documents"], "tokens": manifest["tokens"],
            "stages": manifest["stages"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", default=str(ROOT / f"bench/results/pipeline-{date.today()}.json"))
    args = parser.parse_args()
    pages = ensure_docs()
    megabytes = sum(p.stat().st_size for p in pages) / 1e6
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        truth = json.loads((ROOT / "data/sample/ground-truth.json").read_text())
        tok = Tokenizer.train([p["articleBody"] for p in truth.values()], Path(tmp) / "tok.model", 8192)
        for ranks in args.ranks:
            print(f"mpiexec -n {ranks} python -m pipelines.build ({len(pages)} pages, {megabytes:.1f} MB)",
                  flush=True)
            runs[ranks] = build(ranks, pages, Path(tmp) / f"n{ranks}", tok.path, env)
            runs[ranks]["mb_per_s"] = megabytes / runs[ranks]["seconds"]
    first = runs[args.ranks[0]]
    same = all(r["stages"] == first["stages"] and r["tokens"] == first["tokens"] for r in runs.values())
    # with other jobs on the machine, wall time understates what K ranks give; CPU seconds of all
    # ranks show the work added by splitting it (ideal: the same total for every K)
    print(f"{'ranks':>5}{'seconds':>10}{'MB/s':>8}{'speed-up':>10}{'CPU s':>9}{'documents':>11}"
          f"{'tokens':>11}  peak RSS MiB a rank")
    for ranks, r in runs.items():
        r["speedup"] = first["seconds"] / r["seconds"]
        print(f"{ranks:>5}{r['seconds']:>10.1f}{r['mb_per_s']:>8.2f}{r['speedup']:>9.2f}x{r['cpu_seconds']:>9.1f}"
              f"{r['documents']:>11}{r['tokens']:>11}  {' '.join(f'{m:.0f}' for m in r['peak_rss_mib'])}")
    print(f"same manifest counts for every rank count: {same}")
    out = {"input": str(DOCS), "pages": len(pages), "megabytes": megabytes, "runs": runs, "same_output": same,
           "load_average_after": os.getloadavg(),
           "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                       "load_average": os.getloadavg()}}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
