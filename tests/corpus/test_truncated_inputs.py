"""Compressed and WARC inputs that break off: named in the log, counted in the manifest, and their
documents read so far counted as coming from a half-read file; never a quiet early end."""

import gzip
import json
import logging
from collections import Counter
from pathlib import Path

import pytest
import zstandard
from fastwarc.stream_io import GzipWriter
from fastwarc.warc import WarcRecordType

from pipelines.build import build
from pipelines.sources import read_documents
from tests.corpus.conftest import write_jsonl
from tests.corpus.test_archives import http_response, warc_record

LINES = b"".join(json.dumps({"text": f"document {i} " + "word " * (i % 50)}).encode() + b"\n"
                 for i in range(4000))


def read(path: Path) -> tuple[int, Counter, Counter]:
    skipped, truncated = Counter(), Counter()
    return sum(1 for _ in read_documents([path], skipped, truncated=truncated)), skipped, truncated


def test_whole_zstd_files_of_one_or_many_frames_read_whole(tmp_path):
    one = tmp_path / "one.jsonl.zst"
    one.write_bytes(zstandard.ZstdCompressor().compress(LINES))
    many = tmp_path / "many.jsonl.zst"  # frames split mid-line, as a concatenation of files is
    many.write_bytes(b"".join(zstandard.ZstdCompressor().compress(LINES[i:i + 5000])
                              for i in range(0, len(LINES), 5000)))
    assert read(one) == (4000, Counter(), Counter())
    assert read(many) == (4000, Counter(), Counter())


@pytest.mark.parametrize("suffix", [".jsonl.zst", ".jsonl.gz"])
def test_truncated_jsonl_is_named_and_counted(tmp_path, caplog, suffix):
    big = LINES * 4  # more than the 1 MiB a read takes, so a prefix is read before the cut
    data = zstandard.ZstdCompressor().compress(big) if suffix.endswith(".zst") else gzip.compress(big)
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[: len(data) * 3 // 4])
    n, skipped, truncated = read(path)
    assert 0 < n < 16000
    assert skipped == {"truncated_file": 1} and truncated == {str(path): n}
    assert f"input {path} breaks off after {n} documents" in caplog.text


def test_truncated_zstd_jsonl_in_a_build_manifest(articles, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    good = write_jsonl(tmp_path / "good.jsonl", articles[:8])
    text = "".join(json.dumps({"text": a}) + "\n" for a in articles[8:]).encode()
    data = zstandard.ZstdCompressor().compress(text)
    cut = tmp_path / "cut.jsonl.zst"
    cut.write_bytes(data[: len(data) // 2])
    manifest = build([good, cut], tmp_path / "c", vocab_size=700, valid_fraction=0.0)
    read_stage = manifest["stages"]["read"]
    assert read_stage["dropped"] == {"truncated_file": 1}
    assert list(read_stage["read_from_truncated_files"]) == [str(cut)]
    # a cut zstd frame gives nothing of its last block: what was read ends at a line
    assert read_stage["out"] == 8 + read_stage["read_from_truncated_files"][str(cut)]
    assert str(cut) in caplog.text


@pytest.fixture(scope="module")
def plain_warc(tmp_path_factory) -> bytes:
    """An uncompressed WARC of 6 HTML responses."""
    folder = tmp_path_factory.mktemp("warc")
    writer = GzipWriter(str(folder / "w.warc.gz"))
    for i in range(6):
        body = f"<html><body><p>page {i} ".encode() + b"some words here " * 200 + b"</p></body></html>"
        warc_record(WarcRecordType.response, f"https://site{i}.example/", http_response(
            "200 OK", "text/html", body), "application/http; msgtype=response").write(writer)
    writer.close()
    return gzip.decompress((folder / "w.warc.gz").read_bytes())


def record_offsets(warc: bytes) -> list[int]:
    offsets, at = [], warc.find(b"WARC/1.")
    while at >= 0:
        offsets.append(at)
        at = warc.find(b"\r\n\r\nWARC/1.", at + 1)
        at = at + 4 if at >= 0 else at
    return offsets


def test_whole_warc_reads_every_record(plain_warc, tmp_path):
    path = tmp_path / "whole.warc"
    path.write_bytes(plain_warc)
    assert read(path) == (6, Counter(), Counter())


def test_warc_cut_inside_a_record_names_its_offset(plain_warc, tmp_path, caplog):
    offsets = record_offsets(plain_warc)
    assert len(offsets) == 6
    path = tmp_path / "cut.warc"
    path.write_bytes(plain_warc[: offsets[4] + 1200])  # inside the fifth record's body
    n, skipped, truncated = read(path)
    assert (n, skipped, truncated) == (4, Counter({"truncated_file": 1}), Counter({str(path): 4}))
    assert f"input {path} breaks off after 4 documents" in caplog.text
    assert f"the WARC record at byte {offsets[4]:,} holds" in caplog.text


def test_warc_with_a_wrong_content_length_names_file_and_offset(plain_warc, tmp_path, caplog):
    offsets = record_offsets(plain_warc)
    head = plain_warc.index(b"Content-Length: ", offsets[2])
    end = plain_warc.index(b"\r\n", head)
    length = int(plain_warc[head + 16:end])
    path = tmp_path / "wrong.warc"
    path.write_bytes(plain_warc[:head + 16] + str(length - 100).encode() + plain_warc[end:])
    n, skipped, truncated = read(path)
    assert skipped == {"truncated_file": 1} and truncated == {str(path): n} and n == 3
    assert f"input {path} breaks off" in caplog.text
    assert f"the Content-Length of the record at byte {offsets[2]:,} is wrong" in caplog.text


def test_truncated_gzipped_warc_is_named_and_counted(plain_warc, tmp_path, caplog):
    data = gzip.compress(plain_warc * 40)  # 240 records
    path = tmp_path / "cut.warc.gz"
    path.write_bytes(data[: len(data) // 2])
    n, skipped, truncated = read(path)
    assert 0 < n < 240 and skipped == {"truncated_file": 1} and truncated == {str(path): n}
    assert f"input {path} breaks off after {n} documents" in caplog.text
