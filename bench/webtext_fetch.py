"""What is the fetcher's own ceiling (pages/s, CPU s a page); is its memory flat as the URL list grows 4x?

    python -m bench.webtext_fetch [--urls 2000 8000] [--hosts 16] [--page-kb 40] [--json OUT.json]

A local aiohttp server, in a process of its own so that its CPU is not counted, serves HTML pages
of `--page-kb` KB (gzip-compressed on the wire when asked, as most sites do) on `--hosts`
loopback addresses (127.0.0.10, ...), with no delay: what is measured is the client. Each list is
fetched by a fresh `python -m pipelines.fetch LIST --delay 0 --per-host 4 --allow-private` (one
process) whose wall time, CPU seconds and peak resident memory (ru_maxrss, from wait4) are
recorded; each page goes through robots.txt, the address check, the body limits, the charset
decoding and a gzip WARC record pair. The reference, in the same run and on the same server: a
bare aiohttp loop that GETs and reads the same URLs with the same concurrency and writes nothing,
the least any client must spend.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import harness
from bench._process_memory import measure_child

ROOT = Path(__file__).resolve().parents[1]
SERVER = """
import asyncio, gzip, sys, random
from aiohttp import web
hosts, kb = int(sys.argv[1]), int(sys.argv[2])
rng = random.Random(0)
words = ["".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(3)) for _ in range(3000)]
def page(n):
    r = random.Random(n)
    paras = []
    while sum(map(len, paras)) < kb * 1000:
        paras.append("<p>" + " ".join(r.choice(words) for _ in range(80)) + ".</p>")
    body = "".join(paras)
    return f"<html><head><title>Page {n}</title></head><body><article>{body}</article></body></html>"
pages = [page(n).encode() for n in range(64)]
zipped = [gzip.compress(p, 6) for p in pages]
async def handle(request):
    if request.path == "/robots.txt":
        return web.Response(text="User-agent: *\\nDisallow: /private\\n")
    n = int(request.path.rsplit("/", 1)[1]) % len(pages)
    headers = {"Content-Type": "text/html; charset=utf-8"}
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        return web.Response(body=zipped[n], headers={**headers, "Content-Encoding": "gzip"})
    return web.Response(body=pages[n], headers=headers)
async def main():
    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    for h in range(hosts):
        await web.TCPSite(runner, f"127.0.0.{10 + h}", 8765, backlog=1024).start()
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""
BARE = """
import asyncio, sys, aiohttp
urls = open(sys.argv[1]).read().split()
async def main():
    sem = asyncio.Semaphore(64)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64, force_close=True)) as s:
        async def get(u):
            async with sem, s.get(u) as r:
                await r.read()
        await asyncio.gather(*(get(u) for u in urls))
asyncio.run(main())
"""


def measured(command: list[str]) -> dict:
    """Wall and CPU seconds and peak resident memory of one child process."""
    return measure_child(command, {**os.environ, "PYTHONPATH": str(ROOT)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", type=int, nargs="+", default=[2000, 8000])
    parser.add_argument("--hosts", type=int, default=16)
    parser.add_argument("--page-kb", type=int, default=40)
    parser.add_argument("--json", help="where to write the result (default bench/results/)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-fetch-"))
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(args.hosts), str(args.page_kb)],
                              stdout=subprocess.PIPE, text=True)
    table = harness.Table(["URLs", "pages/s", "CPU ms a page", "bare aiohttp CPU ms a page",
                           "peak RSS MiB", "WARC MB"])
    runs = []
    try:
        assert server.stdout.readline().strip() == "ready", "the bench server did not start"
        for n in args.urls:
            urls = [f"http://127.0.0.{10 + i % args.hosts}:8765/p/{i}" for i in range(n)]
            links = work / f"urls-{n}.txt"
            links.write_text("\n".join(urls) + "\n")
            out = work / f"warcs-{n}"
            run = measured([sys.executable, "-m", "pipelines.fetch", str(links), "--output", str(out),
                            "--delay", "0", "--per-host", "4", "--concurrency", "64", "--allow-private"])
            bare = measured([sys.executable, "-c", BARE, str(links)])
            report = json.loads((out / "report.json").read_text())
            fetched = report["outcomes"].get("fetched", 0)
            assert fetched == n, report["outcomes"]
            warc_mb = sum(p.stat().st_size for p in out.glob("*.warc.gz")) / 1e6
            run |= {"urls": n, "fetched": fetched, "pages_s": fetched / run["wall_s"],
                    "cpu_ms_a_page": 1000 * run["cpu_s"] / fetched, "warc_mb": warc_mb,
                    "bare_cpu_ms_a_page": 1000 * bare["cpu_s"] / n, "bare_wall_s": bare["wall_s"]}
            runs.append(run)
            table.add(n, run["pages_s"], run["cpu_ms_a_page"], run["bare_cpu_ms_a_page"],
                      run["peak_rss_mib"], round(warc_mb, 1))
            shutil.rmtree(out)
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    growth = runs[-1]["peak_rss_mib"] / runs[0]["peak_rss_mib"]
    ratio = runs[-1]["urls"] / runs[0]["urls"]
    result = harness.Result(
        question=harness.question_of(__doc__),
        settings={"urls": args.urls, "hosts": args.hosts, "page_kb": args.page_kb, "per_host": 4,
                  "concurrency": 64, "delay": 0, "server": "aiohttp, own process, gzip on the wire"},
        figures={"runs": runs, "peak_rss_growth": growth, "input_growth": ratio,
                 "pages_s": runs[-1]["pages_s"], "cpu_s_a_page": runs[-1]["cpu_ms_a_page"] / 1000,
                 "cost_over_bare": runs[-1]["cpu_ms_a_page"] / runs[-1]["bare_cpu_ms_a_page"]},
        table=table,
        reference="a bare aiohttp GET-and-read loop over the same URLs, same concurrency, nothing written",
        goal=harness.Goal(f"peak RSS within 30% while the URL list grows {ratio:.0f}x", growth <= 1.3))
    harness.report("webtext_fetch", result, args.json)


if __name__ == "__main__":
    main()
