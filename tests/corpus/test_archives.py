"""Common Crawl-style inputs: a real WARC written from the bundled pages (with the records a crawl
also holds), a WET file and parquet files build into shards with every record accounted for."""

import gzip
import uuid
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastwarc.stream_io import GzipWriter
from fastwarc.warc import WarcRecord, WarcRecordType

from megagpt.formats.shards import read_manifest, read_shard
from megagpt.formats.tokenizer import Tokenizer
from pipelines.build import build
from pipelines.clean import clean_text
from pipelines.extract import extract_html
from pipelines.sources import list_inputs, plan_chunks, read_chunk
from tests.corpus.conftest import ROOT

SAMPLE = ROOT / "data/sample"
PAGES = sorted((SAMPLE / "html").glob("*.html.gz"))[:20]


def warc_record(kind: WarcRecordType, url: str, payload: bytes,
                content_type: str | None = None) -> WarcRecord:
    record = WarcRecord()
    record.init_headers(kind, str(uuid.uuid4()).encode())
    record.headers["WARC-Target-URI"] = url
    if content_type:
        record.headers["Content-Type"] = content_type
    record.set_bytes_content(payload)
    return record


def http_response(status: str, content_type: str, body: bytes) -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n\r\n".encode() + body


@pytest.fixture(scope="module")
def crawl(tmp_path_factory) -> Path:
    """A gzipped WARC: 20 pages (one from Wikipedia, one in latin-1 declared by its header), a
    warcinfo, requests, a redirect, a 404, a PDF and a metadata record."""
    folder = tmp_path_factory.mktemp("crawl")
    writer = GzipWriter(str(folder / "CC-MAIN-0001.warc.gz"))
    warc_record(WarcRecordType.warcinfo, "", b"software: megagpt tests\r\n").write(writer)
    for i, page in enumerate(PAGES):
        html = gzip.decompress(page.read_bytes())
        url = "https://en.wikipedia.org/wiki/Page" if i == 3 else f"https://news{i}.example.com/{page.stem}"
        content_type = "text/html; charset=utf-8"
        if i == 5:  # the same page re-encoded, its charset only in the HTTP header
            html = html.decode("utf-8").encode("latin-1", "xmlcharrefreplace")
            content_type = "text/html; charset=iso-8859-1"
        warc_record(WarcRecordType.request, url, b"GET / HTTP/1.1\r\n\r\n",
                    "application/http; msgtype=request").write(writer)
        warc_record(WarcRecordType.response, url, http_response("200 OK", content_type, html),
                    "application/http; msgtype=response").write(writer)
    others = [("301 Moved Permanently", "text/html", b""), ("404 Not Found", "text/html", b"no"),
              ("200 OK", "application/pdf", b"%PDF-1.4")]
    for status, kind, body in others:
        warc_record(WarcRecordType.response, "https://other.example/x", http_response(status, kind, body),
                    "application/http; msgtype=response").write(writer)
    warc_record(WarcRecordType.metadata, "https://other.example/x", b"fetchTimeMs: 12\r\n").write(writer)
    writer.close()
    return folder


def test_warc_records_are_read_and_counted_by_reason(crawl):
    files = list_inputs([crawl])
    skipped = Counter()
    docs = [d for c in plan_chunks(files, 1 << 20) for d in read_chunk(files, c, skipped)]
    assert len(docs) == 20 and all(d.is_html for d in docs)
    assert docs[3].url == "https://en.wikipedia.org/wiki/Page" and docs[5].charset == "iso-8859-1"
    assert skipped == {"warc_warcinfo": 1, "warc_request": 20, "http_3xx": 1, "http_4xx": 1, "not_html": 1,
                       "warc_metadata": 1}
    latin1 = extract_html(docs[5].content, docs[5].url, docs[5].charset).text
    assert latin1 == extract_html(gzip.decompress(PAGES[5].read_bytes())).text  # decoded by its header


@pytest.mark.parametrize("extractor", ["trafilatura", "resiliparse"])
def test_warc_folder_builds_into_shards(crawl, tmp_path, extractor):
    manifest = build([crawl], tmp_path / "shards", vocab_size=700, valid_fraction=0.0,
                     extractor=extractor)
    stages = manifest["stages"]
    assert stages["read"] == {"in": 45, "out": 20, "dropped": {"http_3xx": 1, "http_4xx": 1, "not_html": 1,
                                                               "warc_metadata": 1, "warc_request": 20,
                                                               "warc_warcinfo": 1}}
    assert stages["filter"]["dropped"].get("blocked_domain:wikipedia.org") == 1
    assert manifest["settings"]["extractor"] == extractor
    texts = {}
    tok = Tokenizer.load(tmp_path / "shards" / "tokenizer.model")
    for shard in read_manifest(tmp_path / "shards")["shards"]:
        for _, tokens, meta in read_shard(tmp_path / "shards" / shard["name"]):
            texts[meta["url"]] = tok.decode(tokens[:-1])
    assert len(texts) >= 15
    for i, page in enumerate(PAGES):
        url = f"https://news{i}.example.com/{page.stem}"
        if url in texts:  # what the extractor makes of the page file itself
            html = gzip.decompress(page.read_bytes())
            assert texts[url] == clean_text(extract_html(html, url, extractor=extractor).text), url


def test_wet_and_parquet_inputs(articles, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    writer = GzipWriter(str(raw / "CC-MAIN-0001.warc.wet.gz"))
    warc_record(WarcRecordType.warcinfo, "", b"isPartOf: CC-MAIN\r\n").write(writer)
    for i, text in enumerate(articles[:10]):
        url = f"https://wet{i}.example.org/"
        warc_record(WarcRecordType.conversion, url, text.encode(), "text/plain").write(writer)
    writer.close()
    urls = [f"https://pq.example/{i}" for i in range(21)]
    table = pa.table({"content": articles[10:30] + [None], "url": urls})
    pq.write_table(table, raw / "part-0.parquet", row_group_size=4)  # 6 row groups
    files = list_inputs([raw])
    chunks = plan_chunks(files, 1)  # a chunk a row group: the parquet file is split, the WET is not
    assert len(chunks) == 1 + 6
    manifest = build([raw], tmp_path / "shards", vocab_size=700, valid_fraction=0.0,
                     text_field="content", chunk_mb=1e-6)
    assert manifest["stages"]["read"] == {"in": 32, "out": 30,
                                          "dropped": {"no_text_field": 1, "warc_warcinfo": 1}}
    shards = [tmp_path / "shards" / s["name"] for s in manifest["shards"]]
    urls = [meta["url"] for shard in shards for _, _, meta in read_shard(shard)]
    assert sorted(urls) == sorted([f"https://pq.example/{i}" for i in range(20)] +
                                  [f"https://wet{i}.example.org/" for i in range(10)])
    with pytest.raises(ValueError, match="has no column 'text'.*--text-field"):
        build([raw / "part-0.parquet"], tmp_path / "other", vocab_size=700)


def test_parquet_text_column_of_another_type_is_named_and_counted(articles, tmp_path, caplog):
    raw = tmp_path / "raw"
    raw.mkdir()
    pq.write_table(pa.table({"text": articles[:12]}), raw / "good.parquet")
    numbers = raw / "numbers.parquet"
    pq.write_table(pa.table({"text": list(range(9)), "body": articles[12:21]}), numbers, row_group_size=4)
    manifest = build([raw], tmp_path / "shards", vocab_size=700, valid_fraction=0.0)
    assert manifest["stages"]["read"] == {"in": 21, "out": 12, "dropped": {"text_field_not_text": 9}}
    caplog.clear()
    skipped = Counter()
    assert list(read_chunk([numbers], plan_chunks([numbers], 1 << 20)[0], skipped)) == []
    assert skipped == {"text_field_not_text": 9}
    assert f"{numbers}: column 'text' holds int64, not text: its 4 rows (of row groups 0-0)" in caplog.text
