"""A fetch killed at any point (kill -9) and run again gives the same WARC records, as a set, as
an uninterrupted one: no finished URL fetched again, no record lost or written twice, no
half-written file left looking complete."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastwarc.warc import ArchiveIterator, WarcRecordType

from pipelines.crawl.fetcher import FetchSettings
from pipelines.crawl.warc import WarcOutput, journal_lines, recover
from pipelines.fetch import fetch
from tests.webtext import servers as s
from tests.webtext.conftest import ROOT, child_env

HOSTS = {"127.0.0.7": "one.resume.test", "127.0.0.8": "two.resume.test", "127.0.0.9": "three.resume.test"}
PAGES = 50
ARGS = dict(delay=0.03, total_timeout=5.0, retries=1, backoff=0.1, allow_private=True,
            resolve=tuple((n, ip) for ip, n in HOSTS.items()))


@pytest.fixture(scope="module")
def site_links(tmp_path_factory):
    port = s.free_port(next(iter(HOSTS)))
    running = s.Servers()
    running.start({ip: {f"/p/{i}": s.html(s.page_html(100 * n + i), pause=0.01) for i in range(PAGES)}
                   for n, ip in enumerate(HOSTS)}, port)
    links = tmp_path_factory.mktemp("links") / "links.txt"
    links.write_text("".join(f"http://{name}:{port}/p/{i}\n" for i in range(PAGES)
                             for name in HOSTS.values()))
    yield links
    running.stop()


def records(folder: Path) -> list[tuple[str, str, str]]:
    """(type, target URI, sha256 of the payload, or the request line) of every record."""
    found = []
    for file in sorted(folder.glob("*.warc.gz")):
        for r in ArchiveIterator(str(file), record_types=WarcRecordType.response | WarcRecordType.request):
            kind = "response" if r.record_type == WarcRecordType.response else "request"
            body = r.reader.read()
            what = hashlib.sha256(body).hexdigest() if kind == "response" else str(r.http_headers.status_line)
            found.append((kind, r.headers["WARC-Target-URI"], what))
    return found


def start_fetch(links: Path, out: Path) -> subprocess.Popen:
    pins = [a for name, ip in ARGS["resolve"] for a in ("--resolve", f"{name}={ip}")]
    command = [sys.executable, "-m", "pipelines.fetch", str(links), "--output", str(out), "--delay", "0.03",
               "--allow-private", "--max-warc-mb", "0.02", "--retries", "1", "--backoff", "0.1", *pins]
    return subprocess.Popen(command, cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)


@pytest.mark.slow
def test_killed_fetch_resumes_to_the_same_records(site_links, tmp_path):
    straight = fetch([site_links], tmp_path / "straight", FetchSettings(**ARGS), max_warc_mb=0.02)
    assert straight["outcomes"] == {"fetched": 3 * PAGES}
    out = tmp_path / "killed"
    process = start_fetch(site_links, out)
    deadline = time.monotonic() + 120
    while sum(1 for _ in journal_lines(out)) < PAGES:  # a third done: kill it mid-fetch
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the fetch made no progress in 120 s"
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait(30) == -signal.SIGKILL
    first = {e["url"] for e in journal_lines(out)}
    assert PAGES <= len(first) < 3 * PAGES and list(out.glob("*.warc.gz.tmp"))  # one was being written
    process = start_fetch(site_links, out)
    assert process.wait(120) == 0, process.stderr.read().decode()[-2000:]
    again = records(out)
    assert sorted(again) == sorted(records(tmp_path / "straight"))  # same set, each record once
    assert len(again) == len(set(again)) == 2 * 3 * PAGES and not list(out.glob("*.tmp"))
    journaled = [e["url"] for e in journal_lines(out)]
    assert len(journaled) == len(set(journaled)) == 3 * PAGES  # nothing fetched twice


def test_recover_cuts_what_the_journal_does_not_vouch_for(tmp_path):
    """A kill between a record and its journal line, or in the middle of a record: the record is
    cut off (its URL is fetched again), the rest is published."""
    page = {"url": "http://a.example/x", "status": 200, "reason": "OK", "body": b"<p>hello</p>",
            "headers": [("Content-Type", "text/html; charset=utf-8")], "ip": "203.0.113.5"}
    request = {"path": "/x", "headers": [("Host", "a.example")]}
    out = WarcOutput(tmp_path, "test")
    out.write("http://a.example/x", request, page, "fetched")
    vouched = out.file.tell()
    out.done = lambda *a, **k: None  # the next record's journal line never gets written
    out.write("http://a.example/y", request, {**page, "url": "http://a.example/y"}, "fetched")
    out.file.write(b"\x1f\x8b\x08\x00half a record")
    out.file.flush()
    tmp = next(tmp_path.glob("*.tmp"))
    assert tmp.stat().st_size > vouched
    assert recover(tmp_path) == [tmp.name.removesuffix(".tmp")]
    published = tmp_path / tmp.name.removesuffix(".tmp")
    assert published.stat().st_size == vouched and not tmp.exists()
    assert sorted((k, u) for k, u, _ in records(tmp_path)) == [("request", "http://a.example/x"),
                                                               ("response", "http://a.example/x")]
