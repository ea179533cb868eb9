"""WARC output that survives kill -9: gzip a record, rotated by size, published by rename, with a
journal that says which URL is finished and where its records end.

Records are written by warcio's WARCWriter (standard headers: WARC-Record-ID, WARC-Date,
WARC-Target-URI, WARC-IP-Address, digests, WARC-Concurrent-To pairing a request with its
response), each record its own gzip member, so any reader (warcio, fastwarc, Common Crawl tools)
reads them and a file can be cut between records. A file being written is `NAME.warc.gz.tmp`;
closed, it is renamed `NAME.warc.gz`: a file without `.tmp` is complete.

The journal (`journal/ATTEMPT-rRANK.journal`, JSON lines; not `.jsonl`, so that
`pipelines.build --input WARCS` does not take it for documents) gets one line a URL once its
outcome is final: for a fetched page, only after its records are written and flushed, with the
file and the byte offset where they end. A rerun first `recover`s: every `.tmp` file is cut back
to the last offset its journal lines name (dropping a record half-written, or written but not
journaled, whose URL is then fetched again) and published. So a URL is in the journal exactly
when its records are in a WARC file, once: nothing is lost or duplicated. Writes are flushed to
the OS (what kill -9 cannot lose); files are fsynced when a WARC file is closed.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

JOURNAL = "journal"
SUFFIX = ".warc.gz"


def journal_lines(folder: Path) -> Iterator[dict[str, Any]]:
    """Every complete journal line of every attempt (a line cut by a kill has no newline: skipped)."""
    for path in sorted((folder / JOURNAL).glob("*.journal")):
        with path.open("rb") as f:
            for line in f:
                if line.endswith(b"\n"):
                    yield json.loads(line)


def recover(folder: Path) -> list[str]:
    """Cut each unfinished WARC file back to its last journaled record and publish it (or remove
    it when no record of it was journaled); returns the files published."""
    ends: dict[str, int] = {}
    for entry in journal_lines(folder):
        if entry.get("file"):
            ends[entry["file"]] = max(ends.get(entry["file"], 0), entry["end"])
    published = []
    for tmp in sorted(folder.glob(f"*{SUFFIX}.tmp")):
        name = tmp.name.removesuffix(".tmp")
        end = ends.get(name, 0)
        if end == 0:
            tmp.unlink()
            continue
        with tmp.open("r+b") as f:
            f.truncate(end)
            os.fsync(f.fileno())
        os.replace(tmp, folder / name)
        published.append(name)
    return published


class WarcOutput:
    """One process's WARC files (`PREFIX-NNNNN.warc.gz`, rotated past `max_bytes`) and journal."""

    def __init__(self, folder: Path, prefix: str, max_bytes: int = 1 << 30):
        self.folder, self.prefix, self.max_bytes = folder, prefix, max_bytes
        (folder / JOURNAL).mkdir(parents=True, exist_ok=True)
        self.journal = (folder / JOURNAL / f"{prefix}.journal").open("ab")
        self.sequence = 0
        self.file: io.BufferedWriter | None = None
        self.name = ""
        self.files: list[str] = []

    def _open(self) -> None:
        self.name = f"{self.prefix}-{self.sequence:05d}{SUFFIX}"
        self.sequence += 1
        self.file = (self.folder / f"{self.name}.tmp").open("wb")
        self.writer = WARCWriter(self.file, gzip=True)

    def write(self, link: str, request: dict[str, Any], response: dict[str, Any], outcome: str) -> None:
        """The request and response records of one page, then its journal line."""
        if self.file is None:
            self._open()
        url = response["url"]
        http = StatusAndHeaders(f"{response['status']} {response['reason']}", response["headers"],
                                protocol="HTTP/1.1")
        warc_headers = {"WARC-IP-Address": response["ip"]} if response.get("ip") else {}
        resp = self.writer.create_warc_record(url, "response", payload=io.BytesIO(response["body"]),
                                              http_headers=http, warc_headers_dict=warc_headers)
        target = request["path"]
        req_http = StatusAndHeaders(f"GET {target} HTTP/1.1", request["headers"], is_http_request=True)
        req = self.writer.create_warc_record(url, "request", payload=io.BytesIO(b""), http_headers=req_http)
        self.writer.write_request_response_pair(req, resp)
        self.file.flush()
        end = self.file.tell()
        self.done(link, outcome, status=response["status"], final=url, file=self.name, end=end)
        if end >= self.max_bytes:
            self._close_file()

    def done(self, link: str, outcome: str, **details: Any) -> None:
        """Journal the final outcome of `link` (flushed: a kill -9 after this loses nothing)."""
        line = {"url": link, "outcome": outcome, **{k: v for k, v in details.items() if v is not None}}
        self.journal.write(json.dumps(line, ensure_ascii=False).encode() + b"\n")
        self.journal.flush()

    def _close_file(self) -> None:
        if self.file is None:
            return
        os.fsync(self.file.fileno())
        self.file.close()
        os.fsync(self.journal.fileno())  # its lines name the records of the file published now
        os.replace(self.folder / f"{self.name}.tmp", self.folder / self.name)
        self.files.append(self.name)
        self.file = None

    def close(self) -> None:
        self._close_file()
        self.journal.close()


def attempt_name() -> str:
    """A name for this attempt's files, ordered by time (files of different attempts never clash)."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + f"-{os.getpid() % 100000:05d}"
