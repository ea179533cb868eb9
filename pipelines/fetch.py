"""Fetch the pages of a link list, politely and resumably, into gzip WARC files.

    python -m pipelines.fetch LINKS --output WARCS --user-agent "mybot/1.0 (+mailto:me@example.org)"
        [--delay 1] [--per-host 1] [--concurrency 64] [--max-mb 4] [--allow-private]
    mpiexec -n 16 python -m pipelines.fetch LINKS --output WARCS ...   # hosts split over 16 ranks
    python -m pipelines.build --input WARCS --output SHARDS ...        # then the corpus

LINKS is the folder `pipelines.links` wrote (or `.jsonl` / `.jsonl.zst` files with a `url` field,
or `.txt` files of one URL a line). Each host belongs to one rank (a hash of its name), so the
per-host delay holds across the whole job; every rank reads the whole list and keeps its hosts.
The fetcher (pipelines/crawl/fetcher.py) obeys robots.txt, refuses private addresses, bounds
time, size, redirects and content types; the WARC output (pipelines/crawl/warc.py) is resumable:
the same command after a kill -9 continues without fetching a finished URL again and without
losing or duplicating a record. WARCS/report.json counts every input URL's outcome.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import logging
import sys
from array import array
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import zstandard
from tqdm import tqdm

from pipelines.crawl.fetcher import OUTCOMES, Fetcher, FetchSettings
from pipelines.crawl.spill import partition_of
from pipelines.crawl.urls import host_of
from pipelines.crawl.warc import SUFFIX, WarcOutput, attempt_name, journal_lines, recover
from pipelines.mpi import LocalComm, abort, settle, world
from pipelines.workarea import save_json

log = logging.getLogger("pipelines.fetch")
LINK_SUFFIXES = (".jsonl", ".jsonl.zst", ".txt")


def fetch(links: Sequence[str | Path], output: str | Path, settings: FetchSettings | None = None, *,
          max_warc_mb: float = 1024, comm: Any = None) -> dict[str, Any]:
    """Fetch every URL of `links` into WARC files in `output`; returns the report (every rank)."""
    comm = comm or world()
    settings = settings or FetchSettings()
    files = list_link_files(links)
    output = Path(output)
    rank, size = comm.Get_rank(), comm.Get_size()
    attempt = None
    if rank == 0:
        output.mkdir(parents=True, exist_ok=True)
        published = recover(output)
        if published:
            log.info("continuing the fetch in %s (%d unfinished WARC files cut back and closed)",
                     output, len(published))
        attempt = attempt_name()
    attempt = comm.bcast(attempt, root=0)
    done = finished_urls(output, rank, size)
    warcs = WarcOutput(output, f"webtext-{attempt}-r{rank:04d}", int(max_warc_mb * 2**20))
    mine = (u for u in read_urls(files) if _owner(u, size) == rank and not _is_done(done, u))
    with tqdm(desc="fetch", unit="url", disable=rank != 0, mininterval=2) as bar:
        try:
            asyncio.run(Fetcher(settings, warcs, bar).run(mine))
        finally:
            warcs.close()
    settle(comm)
    comm.Barrier()
    report = _report(output, files, settings) if rank == 0 else None
    return comm.bcast(report, root=0)


def list_link_files(paths: Sequence[str | Path]) -> list[Path]:
    files: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and p.name.endswith(LINK_SUFFIXES))
            if not found:
                raise FileNotFoundError(f"LINKS {item} holds no {', '.join(LINK_SUFFIXES)} files; make them "
                                        "with python -m pipelines.links")
            files.extend(found)
        elif item.is_file() and item.name.endswith(LINK_SUFFIXES):
            files.append(item)
        else:
            raise FileNotFoundError(f"LINKS {item}: no such folder or {', '.join(LINK_SUFFIXES)} file")
    return files


def read_urls(files: Sequence[Path]) -> Iterator[str]:
    """The URLs of the link files, in order; a line that holds none comes out as it is (its
    outcome is then `bad_url`)."""
    for path in files:
        with path.open("rb") as raw:
            stream = zstandard.ZstdDecompressor().stream_reader(raw) if path.suffix == ".zst" else raw
            for line in io.TextIOWrapper(stream, encoding="utf-8", errors="replace"):
                line = line.strip()
                if not line:
                    continue
                if path.suffix == ".txt":
                    yield line
                    continue
                try:
                    url = json.loads(line)["url"]
                except (ValueError, KeyError, TypeError):
                    url = None
                yield url if isinstance(url, str) else line


def _owner(url: str, size: int) -> int:
    if size == 1:
        return 0
    try:
        return partition_of(host_of(url), size)
    except IndexError:  # not a URL: rank 0 counts it
        return 0


def _url_hash(url: str) -> int:
    return int.from_bytes(hashlib.blake2b(url.encode(), digest_size=8).digest())


def finished_urls(output: Path, rank: int, size: int) -> np.ndarray:
    """Hashes of this rank's URLs journaled by earlier attempts, sorted: 8 bytes a finished URL."""
    hashes = array("Q")
    for entry in journal_lines(output):
        if _owner(entry["url"], size) == rank:
            hashes.append(_url_hash(entry["url"]))
    return np.unique(np.frombuffer(hashes, np.uint64)) if hashes else np.empty(0, np.uint64)


def _is_done(done: np.ndarray, url: str) -> bool:
    if not len(done):
        return False
    h = np.uint64(_url_hash(url))
    i = int(np.searchsorted(done, h))
    return i < len(done) and done[i] == h


def _report(output: Path, files: list[Path], settings: FetchSettings) -> dict[str, Any]:
    outcomes: Counter = Counter()
    statuses: Counter = Counter()
    for entry in journal_lines(output):
        outcomes[entry["outcome"]] += 1
        if "status" in entry:
            statuses[str(entry["status"])] += 1
    urls = sum(1 for _ in read_urls(files))
    warcs = sorted(p.name for p in output.glob(f"*{SUFFIX}"))
    report = {"input_urls": urls, "outcomes": {k: outcomes[k] for k in OUTCOMES if outcomes[k]},
              "http_status": dict(sorted(statuses.items())), "warc_files": warcs,
              "warc_responses": outcomes["fetched"],
              "settings": {f.name: getattr(settings, f.name) for f in fields(settings)}}
    if sum(outcomes.values()) != urls:
        log.warning("%d input URLs but %d outcomes: was the link list changed, or does it repeat URLs?",
                    urls, sum(outcomes.values()))
    save_json(output / "report.json", report)
    log.info("%d URLs: %s", urls, " ".join(f"{k}={v}" for k, v in report["outcomes"].items()))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.fetch", description=__doc__.split("\n\n")[0])
    d = FetchSettings()
    add = parser.add_argument
    add("links", nargs="+", metavar="LINKS", help="the folder pipelines.links wrote, or link files")
    add("--output", required=True, metavar="WARCS", help="folder for the WARC files, journal and report.json")
    add("--user-agent", default=d.user_agent, help="names the project and a contact; its first word is "
        "the token robots.txt groups are matched against")
    add("--concurrency", type=int, default=d.concurrency, help="requests in flight, all hosts together")
    add("--per-host", type=int, default=d.per_host, help="requests in flight to one host")
    add("--delay", type=float, default=d.delay, help="seconds between requests to one host")
    add("--max-crawl-delay", type=float, default=d.max_crawl_delay,
        help="honour robots.txt Crawl-delay up to")
    add("--timeout", type=float, default=d.total_timeout, help="seconds for a whole request")
    add("--connect-timeout", type=float, default=d.connect_timeout)
    add("--read-timeout", type=float, default=d.read_timeout, help="seconds without a byte")
    add("--max-mb", type=float, default=d.max_bytes / 2**20, help="largest body, decompressed, in MiB")
    add("--retries", type=int, default=d.retries, help="on timeouts, resets, 5xx and 429; never on 4xx")
    add("--backoff", type=float, default=d.backoff, help="seconds before the first retry, doubled each time")
    add("--allow-private", action="store_true", help="allow loopback and private addresses (tests only: "
        "a link list is untrusted input)")
    add("--resolve", action="append", default=[], metavar="HOST=IP", help="pin a host name to an address "
        "(as curl --resolve; repeatable)")
    add("--max-warc-mb", type=float, default=1024, help="rotate WARC files past this size")
    args = parser.parse_args(argv)
    comm = world()
    logging.basicConfig(level=logging.INFO if comm.Get_rank() == 0 else logging.WARNING, format="%(message)s")
    try:
        settings = _settings(args)
        fetch(args.links, args.output, settings, max_warc_mb=args.max_warc_mb, comm=comm)
    except (ValueError, FileNotFoundError) as err:
        print(f"pipelines.fetch: error: {err}", file=sys.stderr)
        if not isinstance(comm, LocalComm) and comm.Get_size() > 1:
            abort(comm, 2)
        return 2
    return 0


def _settings(args: argparse.Namespace) -> FetchSettings:
    for name in ("concurrency", "per_host", "max_mb", "timeout", "connect_timeout", "read_timeout",
                 "max_warc_mb"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0")
    if args.delay < 0 or args.retries < 0 or args.backoff < 0:
        raise ValueError("--delay, --retries and --backoff must be >= 0")
    if args.per_host > args.concurrency:
        raise ValueError(f"--per-host {args.per_host} exceeds --concurrency {args.concurrency}")
    pins = tuple(tuple(item.split("=", 1)) for item in args.resolve)
    if any(len(p) != 2 or not p[1] for p in pins):
        raise ValueError(f"--resolve {args.resolve}: give HOST=IP, e.g. --resolve example.org=127.0.0.2")
    return FetchSettings(user_agent=args.user_agent, resolve=pins, concurrency=args.concurrency,
                         per_host=args.per_host,
                         delay=args.delay, max_crawl_delay=args.max_crawl_delay,
                         connect_timeout=args.connect_timeout, read_timeout=args.read_timeout,
                         total_timeout=args.timeout, max_bytes=int(args.max_mb * 2**20), retries=args.retries,
                         backoff=args.backoff, allow_private=args.allow_private)


if __name__ == "__main__":
    sys.exit(main())
