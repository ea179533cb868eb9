"""Hash-partitioned URL de-duplication: no process holds all the URLs.

Reading a dump, each kept link goes to partition `hash(host) % parts` in a memory buffer of
bounded size; a full buffer is written out as one *run* file, its lines grouped by partition, with
the byte offset where each partition starts (`.bounds.json`). De-duplicating partition p then
reads only its byte range of every run of every dump, so it holds only its own URLs: with the
number of partitions set from the input size (`partitions_for`), memory stays flat as the input
grows. Partitions are by host, not by URL, so that the per-domain counts of a partition are
exact and the global top domains are a merge of the partitions' tops; the price is that one
partition holds all of a large host's URLs (a few hundred thousand at most in WebText).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from pipelines.crawl.selection import Link
from pipelines.crawl.urls import host_of

MAX_PARTITIONS = 4096
# decompressed dump bytes a partition stands for (~100k submissions, at most ~30 MB of URLs to merge)
BYTES_A_PARTITION = 256 << 20
_COMPRESSION = {".zst": 10, ".bz2": 8, ".xz": 8}  # Reddit JSON's typical compression ratios


def partitions_for(dumps: Iterable[Path]) -> int:
    """How many hash partitions the de-duplication uses for these dumps: fixed by a run's first
    attempt (saved in its plan), so a resumed run finds its finished partitions."""
    estimate = sum(p.stat().st_size * _COMPRESSION.get(p.suffix, 1) for p in dumps)
    return max(1, min(MAX_PARTITIONS, math.ceil(estimate / BYTES_A_PARTITION)))


def partition_of(host: str, parts: int) -> int:
    return int.from_bytes(hashlib.blake2b(host.encode(), digest_size=8).digest()) % parts


class RunWriter:
    """Buffers links by partition and writes them out as runs of at most `cap` bytes of buffer."""

    def __init__(self, folder: Path, name: str, parts: int, cap: int = 64 << 20):
        self.folder, self.name, self.parts, self.cap = folder, name, parts, cap
        self.buffers: list[list[bytes]] = [[] for _ in range(parts)]
        self.buffered = 0
        self.runs: list[str] = []

    def add(self, link: Link) -> None:
        line = f"{link.url}\t{link.score}\t{link.created}\t{link.subreddit}\n".encode()
        self.buffers[partition_of(host_of(link.url), self.parts)].append(line)
        self.buffered += len(line)
        if self.buffered >= self.cap:
            self.flush()

    def flush(self) -> None:
        if not self.buffered:
            return
        run = f"{self.name}.r{len(self.runs):04d}"
        bounds = [0]
        tmp = self.folder / f"{run}.tsv.tmp"
        with tmp.open("wb") as out:
            for part in range(self.parts):
                block = b"".join(self.buffers[part])
                out.write(block)
                bounds.append(bounds[-1] + len(block))
                self.buffers[part] = []
        (self.folder / f"{run}.bounds.json").write_text(json.dumps(bounds))
        os.replace(tmp, self.folder / f"{run}.tsv")  # the run exists only once complete
        self.runs.append(run)
        self.buffered = 0

    def close(self) -> list[str]:
        self.flush()
        return self.runs


def partition_lines(folder: Path, runs: Iterable[str], part: int) -> Iterator[bytes]:
    """The lines of partition `part` in every run, read from its byte range only."""
    for run in runs:
        bounds = json.loads((folder / f"{run}.bounds.json").read_text())
        start, end = bounds[part], bounds[part + 1]
        if end == start:
            continue
        with (folder / f"{run}.tsv").open("rb") as f:
            f.seek(start)
            yield from f.read(end - start).splitlines()


def merge(lines: Iterable[bytes]) -> tuple[dict[str, tuple[int, int, str]], int]:
    """One entry a URL: its best score, its first date and that first post's subreddit; and the
    number of lines merged."""
    best: dict[str, tuple[int, int, str]] = {}
    n = 0
    for line in lines:
        url, score, created, subreddit = line.decode().split("\t")
        score, created = int(score), int(created)
        n += 1
        seen = best.get(url)
        if seen is None:
            best[url] = (score, created, subreddit)
        else:
            first = (created, subreddit) if created < seen[1] else seen[1:]
            best[url] = (max(score, seen[0]), *first)
    return best, n


def top_domains(urls: Iterable[str], k: int = 100) -> list[tuple[str, int]]:
    """The k hosts with most URLs, ties by name (deterministic across runs)."""
    counts = Counter(host_of(u) for u in urls)
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:k]


def url_order(url: str) -> bytes:
    """Output order inside a partition: by a hash of the URL, so that a fetcher reading the file
    in order meets many hosts at once rather than one host's URLs in a row."""
    return hashlib.blake2b(url.encode(), digest_size=8).digest()
