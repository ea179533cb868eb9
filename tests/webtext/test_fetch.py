"""The fetcher against real servers on loopback addresses: robots.txt obeyed, per-host gaps
measured at the server, every failure ending in its outcome, private addresses refused, and the
chain dump -> links -> WARC -> shards reconciling its counts."""

from __future__ import annotations

import gzip
import json
import tarfile
from collections import Counter
from pathlib import Path

import pytest
from fastwarc.warc import ArchiveIterator, WarcRecordType
from warcio.archiveiterator import ArchiveIterator as WarcioIterator

from pipelines.crawl.fetcher import FetchSettings
from pipelines.crawl.netsafe import charset_of, is_public
from pipelines.crawl.robots import robots_from
from pipelines.crawl.warc import journal_lines
from pipelines.fetch import fetch
from pipelines.links import select_links
from tests.webtext import servers as s
from tests.webtext.conftest import post, run_module, write_dump

A, B, C, W, D = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6"
NAMES = {A: "news.site-a.test", B: "blog.site-b.test", C: "down.site-c.test", W: "en.wikipedia.org",
         D: "slow.site-d.test"}
DELAY = 0.3
SETTINGS = dict(delay=DELAY, total_timeout=2.0, read_timeout=1.5, connect_timeout=2.0, retries=1, backoff=0.2,
                max_bytes=1 << 20, allow_private=True, resolve=tuple((n, ip) for ip, n in NAMES.items()))


def sites(port: int) -> dict[str, dict]:
    rules = b"User-agent: *\nDisallow: /private\n\nUser-agent: other\nDisallow: /\n"
    a = {"/robots.txt": s.fixed(200, rules),
         **{f"/page/{i}": s.html(s.page_html(i)) for i in range(6)},
         "/private/secret": s.html(s.page_html(99)),
         "/redirect/1": s.redirect("/redirect/2"), "/redirect/2": s.redirect("/redirect/3", 301),
         "/redirect/3": s.redirect("/landing"), "/landing": s.html(s.page_html(7)),
         "/loop/a": s.redirect("/loop/b"), "/loop/b": s.redirect("/loop/a"),
         **{f"/chain/{i}": s.redirect(f"/chain/{i + 1}") for i in range(8)},
         "/to-wiki": s.redirect(f"http://{NAMES[W]}:{port}/wiki/Reddit")}
    b = {**{f"/page/{i}": s.html(s.page_html(20 + i)) for i in range(3)},
         "/missing": s.fixed(404), "/error": s.fixed(500),
         "/flaky": s.then(s.fixed(429, **{"Retry-After": "1"}), s.html(s.page_html(30))),
         "/slow": s.drip(0.4), "/big": s.html("<p>" + "x" * (2 << 20) + "</p>"), "/bomb": s.gzip_bomb(),
         "/endless": s.endless(),
         "/download": s.fixed(200, bytes(range(256)) * 50, "application/octet-stream"),
         "/latin1": s.html(s.page_html(31).replace("A story", "Caf\u00e9 story"), charset="iso-8859-1"),
         "/huge-header": s.fixed(200, b"<p>x</p>", "text/html", **{"X-Big": "y" * 20000})}
    c = {"/robots.txt": s.fixed(500), "/page/0": s.html(s.page_html(40)), "/page/1": s.html(s.page_html(41))}
    w = {"/wiki/Reddit": s.html(s.page_html(50, "Reddit - Wikipedia"))}
    d = {"/robots.txt": s.fixed(200, b"User-agent: *\nCrawl-delay: 1\n"),
         **{f"/page/{i}": s.html(s.page_html(60 + i)) for i in range(3)}}
    return {A: a, B: b, C: c, W: w, D: d}


EXPECTED = {  # (ip, path): outcome
    **{(A, f"/page/{i}"): "fetched" for i in range(6)}, (A, "/private/secret"): "robots_disallowed",
    (A, "/redirect/1"): "fetched", (A, "/loop/a"): "redirect_loop", (A, "/chain/0"): "too_many_redirects",
    (A, "/to-wiki"): "fetched",
    **{(B, f"/page/{i}"): "fetched" for i in range(3)},
    (B, "/missing"): "http_4xx", (B, "/error"): "http_5xx",
    (B, "/flaky"): "fetched", (B, "/slow"): "timeout", (B, "/big"): "too_large", (B, "/bomb"): "too_large",
    (B, "/endless"): "too_large", (B, "/download"): "wrong_type", (B, "/latin1"): "fetched",
    (B, "/huge-header"): "bad_response",
    (C, "/page/0"): "robots_unreachable", (C, "/page/1"): "robots_unreachable",
    **{(D, f"/page/{i}"): "fetched" for i in range(3)},
}


@pytest.fixture(scope="module")
def servers():
    running = s.Servers()
    port = s.free_port(A)
    running.start(sites(port), port)
    yield running
    running.stop()


def url(servers, ip: str, path: str) -> str:
    return f"http://{NAMES[ip]}:{servers.port}{path}"


@pytest.fixture(scope="module")
def chain(servers, tmp_path_factory):
    """A Reddit dump linking to the sites (and to what link selection drops), its links, its WARCs."""
    root = tmp_path_factory.mktemp("chain")
    posts = [post(url(servers, ip, path), 5 + n) for n, (ip, path) in enumerate(EXPECTED)]
    posts += [post(url(servers, A, "/page/0") + "?utm_source=reddit", 50),  # a duplicate, once normalized
              post(url(servers, A, "/page/1"), 1), post(url(servers, W, "/wiki/Other"), 9),
              post(url(servers, B, "/image.png"), 9), post("https://i.imgur.com/x", 9),
              post(url(servers, B, "/page/9"), 9, is_self=True)]
    dump = write_dump(root / "RS_2017-10.zst", posts)
    links = select_links([dump], root / "links", partitions=3, workers=1)
    report = fetch([root / "links"], root / "warcs", FetchSettings(**SETTINGS), max_warc_mb=0.01)
    return root, links, report


def outcomes_by_url(folder: Path) -> dict[str, str]:
    return {e["url"]: e["outcome"] for e in journal_lines(folder)}


@pytest.mark.slow
def test_every_url_ends_in_its_outcome(servers, chain):
    root, links, report = chain
    got = outcomes_by_url(root / "warcs")
    assert got == {url(servers, ip, path): outcome for (ip, path), outcome in EXPECTED.items()}
    assert report["input_urls"] == links["unique_urls"] == len(EXPECTED) == sum(report["outcomes"].values())
    assert report["outcomes"] == dict(Counter(EXPECTED.values()))


@pytest.mark.slow
def test_robots_obeyed_and_fetched_once_a_host(servers, chain):
    assert "/private/secret" not in servers.paths(A)
    for ip in (A, B, D):
        assert servers.paths(ip).count("/robots.txt") == 1, ip
    assert servers.paths(C) == ["/robots.txt"] * 2  # a 500 is retried once, then all of C is off limits


@pytest.mark.slow
def test_per_host_gaps_measured_at_the_server(servers, chain):
    """Request starts to one host are at least the delay apart (robots.txt and retries included),
    and at least the robots.txt Crawl-delay (1 s) where it asks for more."""
    for ip in (A, B):
        gaps = servers.gaps(ip)
        assert len(gaps) >= 8 and min(gaps) >= 0.8 * DELAY, (ip, gaps)
    assert min(servers.gaps(D)) >= 0.8 * 1.0
    assert servers.paths(B).count("/flaky") == 2 and servers.paths(B).count("/error") == 2  # retried once
    assert servers.paths(B).count("/missing") == 1  # never on 4xx


@pytest.mark.slow
def test_warc_records_are_standard_and_complete(servers, chain):
    root, _, report = chain
    files = sorted((root / "warcs").glob("*.warc.gz"))
    assert len(files) > 1 and not list((root / "warcs").glob("*.tmp"))  # rotated, all closed
    responses, requests = {}, 0
    for file in files:
        kinds = WarcRecordType.response | WarcRecordType.request
        for record in ArchiveIterator(str(file), record_types=kinds):
            if record.record_type == WarcRecordType.request:
                requests += 1
                continue
            assert record.http_headers.status_code == 200 and record.http_charset == "utf-8"
            responses[record.headers["WARC-Target-URI"]] = record.reader.read()
        with file.open("rb") as f:
            assert sum(1 for r in WarcioIterator(f) if r.rec_type == "response") == \
                sum(1 for r in ArchiveIterator(str(file), record_types=WarcRecordType.response))
    assert len(responses) == requests == report["warc_responses"] == report["outcomes"]["fetched"]
    assert url(servers, A, "/landing") in responses and url(servers, W, "/wiki/Reddit") in responses
    assert "Caf\u00e9 story".encode() in responses[url(servers, B, "/latin1")]


@pytest.mark.slow
def test_counts_reconcile_from_dump_to_shards(servers, chain, tmp_path):
    root, links, report = chain
    assert links["submissions_read"] == len(EXPECTED) + 6
    assert links["dropped"] == {"low_score": 1, "wikipedia": 1, "media_file": 1, "blocked_domain": 1,
                                "self_post": 1}
    assert links["kept"] - links["duplicates_merged"] == links["unique_urls"] == report["input_urls"]
    out = tmp_path / "shards"
    run_module("pipelines.build", "--input", str(root / "warcs"), "--output", str(out), "--train-tokenizer",
               "--vocab-size", "400", "--min-chars", "100", "--valid-fraction", "0", "--workers", "1")
    manifest = json.loads((out / "manifest.json").read_text())
    stages = manifest["stages"]
    fetched = report["outcomes"]["fetched"]
    assert stages["read"]["out"] == fetched and stages["read"]["dropped"] == {"warc_request": fetched}
    assert stages["filter"]["dropped"] == {"blocked_domain:wikipedia.org": 1}
    metas = []
    for shard in out.glob("*.tar"):
        with tarfile.open(shard) as tar:
            metas += [json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith("meta.json")]
    urls = {m["url"] for m in metas}
    assert len(metas) == manifest["documents"] == fetched - 1
    assert urls == {url(servers, ip, p) for (ip, p), o in EXPECTED.items() if o == "fetched"
                    and p not in ("/redirect/1", "/to-wiki")} | {url(servers, A, "/landing")}


def test_private_addresses_refused_without_the_flag(servers, tmp_path):
    links = tmp_path / "links.txt"
    links.write_text(f"{url(servers, A, '/page/0')}\nhttp://127.0.0.3:{servers.port}/page/1\n")
    before = len(servers.arrivals)
    report = fetch([links], tmp_path / "warcs", FetchSettings(**{**SETTINGS, "allow_private": False}))
    assert report["outcomes"] == {"private_address": 2}
    assert len(servers.arrivals) == before  # not even robots.txt was asked for


@pytest.mark.parametrize("address, public", [
    ("8.8.8.8", True), ("2606:4700::1111", True), ("127.0.0.2", False), ("10.1.2.3", False),
    ("192.168.0.1", False), ("172.16.5.4", False), ("169.254.169.254", False), ("100.64.0.1", False),
    ("224.0.0.1", False), ("0.0.0.0", False), ("::1", False), ("fe80::1%eth0", False), ("fd00::1", False),
    ("::ffff:10.0.0.1", False), ("::ffff:8.8.8.8", True)])
def test_public_addresses(address, public):
    assert is_public(address) is public


def test_robots_status_rules():
    page = "http://x.org/a"
    assert robots_from(404).allows(page, "bot") and not robots_from(503).allows(page, "bot")
    assert not robots_from(None).allows(page, "bot") and not robots_from(429).allows(page, "bot")
    rules = robots_from(200, b"User-agent: *\nDisallow: /\n\nUser-agent: mybot\nAllow: /\nCrawl-delay: 3\n")
    assert rules.allows("http://x.org/a", "mybot") and not rules.allows("http://x.org/a", "otherbot")
    assert rules.crawl_delay("mybot") == 3.0


def test_charset_from_header_then_meta():
    assert charset_of("text/html; charset=ISO-8859-1", b"") == "iso8859-1"
    assert charset_of("text/html", b'<head><meta charset="windows-1252">') == "cp1252"
    assert charset_of("text/html; charset=bogus", b"") == "utf-8"
    assert gzip.decompress(gzip.compress(b"x")) == b"x"
