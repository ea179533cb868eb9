"""How fast is a whole corpus build, and how does it speed up from 1 to 2 MPI ranks?

    python -m bench.pipeline [--ranks 1 2] [--extractors trafilatura resiliparse] [--warc-files 16]
                             [--baseline CHECKOUT] [--json bench/results/pipeline-DATE.json]

Whole corpus build throughput, 1 against 2 MPI ranks, on Debian's Python 3.11 HTML manual.
Input: the HTML pages of the `python3.11-doc` package (about 530 pages, 50 MB), installed here
with apt-get when missing (needs root and the Debian mirror). Each run is
`mpiexec -n K python -m pipelines.build --input PAGES --tokenizer TOK --workers 1` (one process
a rank, so K is the cores used), with a tokenizer trained beforehand on the bundled sample pages so
that every run does the same work, once for each extractor. Reports MB of raw HTML a second, the
speed-up over one rank, each rank's peak memory, and checks that the runs of an extractor wrote
the same manifest. With --warc-files N the pages are first written into N gzipped WARC files
(HTTP responses, as Common Crawl stores them) and the builds read those.
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
from bench.harness import ROOT
from megagpt.formats.tokenizer import Tokenizer

DOCS = Path("/usr/share/doc/python3.11/html")


def ensure_docs() -> list[Path]:
    if not DOCS.is_dir():
        print("installing python3.11-doc with apt-get ...", flush=True)
        try:
            subprocess.run(["apt-get", "update", "-qq"], check=True)
            subprocess.run(["apt-get", "install", "-y", "-qq", "python3.11-doc"], check=True)
        except (OSError, subprocess.CalledProcessError) as err:
            sys.exit(f"bench.pipeline: cannot install python3.11-doc ({err}); run as root with a Debian "
                     "mirror, or install it yourself: apt-get install python3.11-doc")
    return sorted(DOCS.rglob("*.html"))  # the HTML pages only, not the reST sources beside them


def write_warcs(pages: list[Path], folder: Path, files: int) -> list[Path]:
    """The pages as HTTP response records of `files` gzipped WARC files."""
    from fastwarc.stream_io import GzipWriter
    from fastwarc.warc import WarcRecord, WarcRecordType

    paths = [folder / f"CC-MAIN-{i:05d}.warc.gz" for i in range(files)]
    writers = [GzipWriter(str(p)) for p in paths]
    for i, page in enumerate(pages):
        record = WarcRecord()
        record.init_headers(WarcRecordType.response, f"{i:032x}".encode())
        record.headers["WARC-Target-URI"] = f"https://docs.python.org/3.11/{page.relative_to(DOCS)}"
        record.headers["Content-Type"] = "application/http; msgtype=response"
        record.set_bytes_content(b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
                                 + page.read_bytes())
        record.write(writers[i % files])
    for writer in writers:
        writer.close()
    return paths


def build(ranks: int, inputs: list[Path], out: Path, tokenizer: Path, extractor: str,
          env: dict[str, str], checkout: Path = ROOT) -> dict:
    """One timed corpus build of the manual on `ranks` MPI ranks by the code in `checkout`: time,
    each rank's peak memory, manifest counts."""
    cmd = [os.path.join(os.path.dirname(sys.executable), "mpiexec"), "-n", str(ranks), sys.executable,
           "-m", "pipelines.build", "--input", *map(str, inputs), "--output", str(out),
           "--tokenizer", str(tokenizer), "--workers", "1"]
    if checkout == ROOT:  # an earlier checkout may not know the option (it extracted with trafilatura)
        cmd += ["--extractor", extractor]
    run = run_measured(cmd, {**env, "PYTHONPATH": str(checkout)}, checkout)
    manifest = json.loads((out / "manifest.json").read_text())
    shutil.rmtree(out)
    return {**run, "documents": manifest["documents"], "tokens": manifest["tokens"],
            "stages": manifest["stages"]}


def builds_of(args, pages: list[Path], megabytes: float, env: dict[str, str]) -> list[dict]:
    """Every timed build: each extractor (and the baseline) at each rank count."""
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        truth = json.loads((ROOT / "data/sample/ground-truth.json").read_text())
        tok = Tokenizer.train([p["articleBody"] for p in truth.values()], Path(tmp) / "tok.model", 8192)
        inputs = write_warcs(pages, Path(tmp), args.warc_files) if args.warc_files else pages
        builds = [(e, e, ROOT) for e in args.extractors]
        if args.baseline:
            builds.append(("baseline", "trafilatura", args.baseline.resolve()))
        for label, extractor, checkout in builds:
            for ranks in args.ranks:
                print(f"{label}: mpiexec -n {ranks} python -m pipelines.build --extractor {extractor} "
                      f"({len(pages)} pages in {input_kind(args)}, {megabytes:.1f} MB)", flush=True)
                run = build(ranks, inputs, Path(tmp) / "out", tok.path, extractor, env, checkout)
                rate = megabytes / run["seconds"]
                runs.append({"extractor": label, "ranks": ranks, **run, "mb_per_s": rate})
    return runs


def input_kind(args) -> str:
    return f"{args.warc_files} WARC files" if args.warc_files else "HTML files"


def summarize(settings: dict[str, Any], figures: dict[str, Any]) -> harness.Result:
    """The harness result of a run: `figures` holds pages, megabytes and runs (one a build)."""
    runs, same = figures["runs"], True
    table = harness.Table(["extractor", "ranks", "seconds", "MB/s", "MB/s/core", "speed-up", "CPU s",
                           "documents", "peak RSS MiB a rank"])
    for r in runs:
        first = next(f for f in runs if f["extractor"] == r["extractor"])
        same &= r["stages"] == first["stages"] and r["tokens"] == first["tokens"]
        r["speedup"] = first["seconds"] / r["seconds"]
        rss = " ".join(f"{m:.0f}" for m in r.get("peak_rss_mib", []))
        table.add(r["extractor"], r["ranks"], round(r["seconds"], 1), round(r["mb_per_s"], 2),
                  round(r["mb_per_s"] / r["ranks"], 2), f"{r['speedup']:.2f}x",
                  None if r.get("cpu_seconds") is None else round(r["cpu_seconds"], 1), r["documents"], rss)
    figures["same_output"] = same
    return harness.Result(
        question=harness.question_of(__doc__), settings=settings, figures=figures, table=table,
        reference="the first rank count of the same extractor, in the same run (speed-up); with --baseline, "
                  "an earlier checkout's trafilatura builds",
        goal=harness.Goal("every rank count of an extractor writes the same manifest", same))


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--extractors", nargs="+", default=["trafilatura", "resiliparse"])
    parser.add_argument("--warc-files", type=int, default=0, help="read the pages from this many WARC files")
    parser.add_argument("--baseline", type=Path,
                        help="also run the trafilatura builds with this earlier checkout, after ours")
    args = parser.parse_args()
    pages = ensure_docs()
    megabytes = sum(p.stat().st_size for p in pages) / 1e6
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    runs = builds_of(args, pages, megabytes, env)
    settings = {"input": str(DOCS), "format": input_kind(args), "ranks": args.ranks,
                "extractors": args.extractors, "baseline": str(args.baseline) if args.baseline else None,
                "workers_a_rank": 1}
    figures = {"pages": len(pages), "megabytes": megabytes, "runs": runs}
    harness.report("pipeline", summarize(settings, figures), args.json,
                   label="warc" if args.warc_files else "")


if __name__ == "__main__":
    main()
