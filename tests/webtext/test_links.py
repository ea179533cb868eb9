"""Link selection: WebText's rules, URL normalization, de-duplication across dumps by hash
partition, every published dump format, resume per dump, and MPI ranks giving the same links."""

from __future__ import annotations

import io
import json

import pytest
import zstandard

import pipelines.links as links_module
from pipelines.crawl.dumps import DumpError
from pipelines.crawl.selection import Rules, parse_date
from pipelines.crawl.urls import normalize
from pipelines.links import main, select_links
from tests.webtext.conftest import post, read_links, run_module, write_dump

DAY = 86_400
DEC_2017 = 1_512_086_400


@pytest.mark.parametrize("url, expected", [
    ("HTTP://WWW.Example.COM:80/a?utm_source=x&b=1&fbclid=2#frag", "http://www.example.com/a?b=1"),
    ("https://news.example.org:443", "https://news.example.org/"),
    ("https://example.org:8443/x?b=2&a=1&gclid=z", "https://example.org:8443/x?b=2&a=1"),
    ("https://example.org/p?a=1&amp;utm_medium=s&amp;c=3", "https://example.org/p?a=1&c=3"),
    ("http://[2001:db8::1]:8080/x", "http://[2001:db8::1]:8080/x"),
])
def test_normalize(url, expected):
    assert normalize(url) == (expected, None)


@pytest.mark.parametrize("url, reason", [
    ("ftp://example.com/file", "not_http"), ("javascript:alert(1)", "not_http"),
    ("http://exa mple.com/", "malformed_url"), ("http://example.com:99999/", "malformed_url"),
    ("http:///nohost", "malformed_url"), ("http://localhost/x", "malformed_url"),
])
def test_unusable_urls(url, reason):
    assert normalize(url) == (None, reason)


def rules_dump(tmp_path):
    """One submission for each reason a submission is dropped, and two kept ones."""
    posts = [
        post("https://kept.example.com/story", 3),
        post("https://other.example.net/a", 100),
        post("https://self.example.com/x", 50, is_self=True),
        post("https://www.reddit.com/r/news/comments/abc/", 50),
        post("https://i.redd.it/abc.png", 50),
        post("https://low.example.com/x", 2),
        post("https://en.wikipedia.org/wiki/Reddit", 50),
        post("https://de.m.wikipedia.org/wiki/Reddit", 50),
        post("https://cdn.example.com/photo.JPG?size=large", 50),
        post("https://example.com/paper.pdf", 50),
        post("https://i.imgur.com/abc", 50),
        post("https://blocked.example.org/page", 50),
        post("ftp://files.example.com/x", 50),
        post("http://exa mple.com/", 50),
        post("https://late.example.com/x", 50, created=DEC_2017 + DAY),
        "{not json",
        json.dumps({"score": 9, "is_self": False}),
    ]
    return write_dump(tmp_path / "RS_2017-11.zst", posts)


def test_rules_keep_webtext_links_and_count_every_drop(tmp_path):
    blocklist = tmp_path / "block.txt"
    blocklist.write_text("# mine\nblocked.example.org\n")
    dump = rules_dump(tmp_path)
    assert main([str(dump), "--output", str(tmp_path / "links"), "--until", "2017-12-01",
                 "--blocklist", str(blocklist), "--workers", "1"]) == 0
    report = json.loads((tmp_path / "links" / "report.json").read_text())
    assert {r["url"] for r in read_links(tmp_path / "links")} == {"https://kept.example.com/story",
                                                                  "https://other.example.net/a"}
    assert report["dropped"] == {"bad_json": 1, "blocked_domain": 2, "low_score": 1, "malformed_url": 1,
                                 "media_file": 2, "no_url": 1, "not_http": 1, "outside_dates": 1,
                                 "reddit_link": 2, "self_post": 1, "wikipedia": 2}
    assert report["submissions_read"] == 17 == report["kept"] + sum(report["dropped"].values())
    assert not (tmp_path / "links" / ".work").exists()


def test_every_dump_format_and_dedup_across_dumps(tmp_path):
    """The same URL in several dumps and spellings is one line with its best score and first date;
    the .zst has a 2 GiB window that a default decompressor refuses."""
    same = ["https://Story.example.com/a?utm_source=reddit", "https://story.example.com:443/a#comments",
            "HTTPS://STORY.EXAMPLE.COM/a", "https://story.example.com/a?fbclid=1"]
    extra = [post(f"https://host{i % 37}.example.com/page/{i}", 3 + i % 5, created=1_400_000_000 + i)
             for i in range(400)]
    dumps = []
    for n, (suffix, url) in enumerate(zip([".zst", ".bz2", ".xz", ".jsonl"], same)):
        dumps.append(write_dump(tmp_path / f"RS_2015-0{n + 1}{suffix}",
                                [post(url, 10 * (n + 1), created=1_420_000_000 - n * DAY, subreddit=f"s{n}"),
                                 *extra[n * 100:(n + 1) * 100]]))
    with pytest.raises(zstandard.ZstdError, match="too much memory"):
        zstandard.ZstdDecompressor().stream_reader(io.BytesIO(dumps[0].read_bytes())).read()
    report = select_links(dumps, tmp_path / "links", partitions=7, workers=1)
    rows = read_links(tmp_path / "links")
    assert len(rows) == len({r["url"] for r in rows}) == 401 == report["unique_urls"]
    story = next(r for r in rows if "story" in r["url"])
    assert story == {"url": "https://story.example.com/a", "score": 40,
                     "created_utc": 1_420_000_000 - 3 * DAY, "subreddit": "s3"}
    assert report["kept"] == 404 and report["duplicates_merged"] == 3
    assert len(list((tmp_path / "links").glob("links-*.jsonl.zst"))) == 7
    assert sum(report["top_domains"].values()) == 401 and report["top_domains"]["story.example.com"] == 1


def test_partitions_change_no_link(tmp_path):
    posts = [post(f"https://h{i % 50}.example.com/{i % 300}", i % 9, created=1_400_000_000 + i)
             for i in range(2000)]
    dump = write_dump(tmp_path / "RS_2014-01.jsonl", posts)
    one = select_links([dump], tmp_path / "one", partitions=1, workers=1, plain=True)
    many = select_links([dump], tmp_path / "many", partitions=16, workers=2, plain=True)
    key = lambda rows: sorted(json.dumps(r, sort_keys=True) for r in rows)
    assert key(read_links(tmp_path / "one")) == key(read_links(tmp_path / "many"))
    assert one["top_domains"] == many["top_domains"] and one["dropped"] == many["dropped"]


def test_killed_run_continues_from_its_finished_dumps(tmp_path, monkeypatch):
    dumps = [write_dump(tmp_path / f"RS_2016-0{m}.zst",
                        [post(f"https://m{m}-{i % 11}.example.com/{i}", 3 + i % 4) for i in range(300)])
             for m in (1, 2, 3)]
    straight = select_links(dumps, tmp_path / "straight", partitions=4, workers=1)
    real_select, calls = links_module.select, {"n": 0}

    def dies_in_the_second_dump(line, rules):
        calls["n"] += 1
        if calls["n"] == 450:
            raise KeyboardInterrupt  # as a kill would, mid-dump
        return real_select(line, rules)

    monkeypatch.setattr(links_module, "select", dies_in_the_second_dump)
    with pytest.raises(KeyboardInterrupt):
        select_links(dumps, tmp_path / "resumed", partitions=4, workers=1)
    monkeypatch.setattr(links_module, "select", real_select)
    read = []
    real_lines = links_module.dump_lines
    monkeypatch.setattr(links_module, "dump_lines", lambda path, progress: read.append(path.name)
                        or real_lines(path, progress))
    resumed = select_links(dumps, tmp_path / "resumed", workers=1)
    assert read == ["RS_2016-02.zst", "RS_2016-03.zst"]  # the finished first dump is not read again
    rows = lambda name: sorted(read_links(tmp_path / name), key=str)
    assert rows("resumed") == rows("straight")
    assert {k: resumed[k] for k in ("kept", "dropped", "unique_urls")} == \
        {k: straight[k] for k in ("kept", "dropped", "unique_urls")}


def test_errors_name_the_file_and_the_fix(tmp_path):
    dump = write_dump(tmp_path / "RS_2017-01.zst", [post(f"https://a.example.com/{i}") for i in range(3000)])
    dump.write_bytes(dump.read_bytes()[:-40])
    with pytest.raises(DumpError, match="RS_2017-01.zst.*truncated or corrupt: download it again"):
        select_links([dump], tmp_path / "links", workers=1)
    with pytest.raises(ValueError, match="--until '2017-13-01': give a date as YYYY-MM-DD"):
        parse_date("2017-13-01", "--until")
    good = write_dump(tmp_path / "RS_2017-02.jsonl", [post("https://a.example.com/x")])
    with pytest.raises(ValueError, match="unfinished run with other settings.*run the same command"):
        select_links([dump], tmp_path / "links", Rules(min_karma=5), workers=1)
    select_links([good], tmp_path / "done", workers=1)
    with pytest.raises(FileExistsError, match="already holds finished links.*--force"):
        select_links([good], tmp_path / "done", workers=1)


@pytest.mark.slow
def test_mpi_ranks_select_the_same_links(tmp_path):
    dumps = [write_dump(tmp_path / f"RS_2013-0{m}.zst",
                        [post(f"https://d{i % 23}.example.com/{(i * m) % 500}", i % 7,
                              created=1_360_000_000 + i) for i in range(1500)]) for m in (1, 2, 3)]
    paths = [str(d) for d in dumps]
    run_module("pipelines.links", *paths, "--output", str(tmp_path / "one"), "--partitions", "5",
               "--workers", "1")
    run_module("pipelines.links", *paths, "--output", str(tmp_path / "two"), "--partitions", "5",
               ranks=2)
    for name in [f"links-{p:05d}.jsonl.zst" for p in range(5)]:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    one, two = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("one", "two"))
    assert one == two
