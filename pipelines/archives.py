"""Documents from the formats the field distributes crawls and corpora in: Common Crawl WARC and
WET files (fastwarc) and parquet data sets (pyarrow).

- WARC: the HTML responses (status 200, Content-Type text/html or application/xhtml+xml), with the
  record's target URI as the document's URL (so the domain blocklist applies) and the charset of
  the HTTP header when it has one. Every other record is counted by reason: `warc_request`,
  `warc_metadata`, ... for other record types, `http_3xx` / `http_4xx` / `http_5xx`, `not_html`.
  gzip and zstd files are decoded by pipelines/compressed.py, which raises at a cut-off file
  (fastwarc's decoders end quietly there), lz4 files by fastwarc. A record shorter than its
  Content-Length, or one that does not parse after a good one, ends the file: its documents so
  far are kept, the file is counted as `truncated_file` and named with the record's byte offset
  (a cut-off lz4 file is noticed only when the cut falls inside a record). A WARC file is one
  piece of work (compressed records cannot be found without reading from the start); the key of
  a record is its place in the file.
- WET: the conversion records' text (already extracted: no HTML extraction) with their URI.
- parquet: a text column (`--text-field`, default `text`; a column that is not of a string type is
  named in a warning with its type and its rows counted as `text_field_not_text`; a null row is
  `no_text_field`) and, when there is one, `url`; read a
  row group at a time, so a chunk of a large file is a range of row groups and memory stays
  bounded by a row group. The key of a row is its row number in the file.

Imported only when such a file is read, so a build of HTML and JSON lines never loads pyarrow.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from fastwarc.warc import ArchiveIterator, WarcRecord, WarcRecordType

from pipelines.compressed import TruncatedInput, open_binary
from pipelines.documents import KEY_FILE_SHIFT, Piece, RawDocument

_HTML_TYPES = ("text/html", "application/xhtml+xml")
log = logging.getLogger("pipelines.archives")


def warc_documents(path: Path, piece: Piece, skipped: Counter, *, extracted: bool) -> Iterator[RawDocument]:
    """The HTML responses of a WARC file (or, `extracted`, the text of a WET file's conversions).

    A record whose body is shorter than its Content-Length, or a record that does not parse after
    a good one (the Content-Length before it was wrong, or the file is cut there), ends the file
    with TruncatedInput naming the record's byte offset; the documents before it are kept.
    """
    wanted = WarcRecordType.conversion if extracted else WarcRecordType.response
    offset = None  # of the last record that parsed
    compressed = path.suffix in (".gz", ".zst")
    with open_binary(path) if compressed else path.open("rb") as stream:
        try:
            for number, record in enumerate(ArchiveIterator(stream, parse_http=not extracted,
                                                            record_types=WarcRecordType.any_type)):
                offset = record.stream_pos
                doc = _warc_document(record, wanted, extracted, skipped)
                if doc is not None:
                    yield RawDocument(piece.file << KEY_FILE_SHIFT | number, str(path), *doc)
        except TruncatedInput as err:
            raise TruncatedInput(f"{err}{_DECOMPRESSED if compressed else ''}") from None
        except OSError as err:  # fastwarc: "Invalid WARC header"
            if offset is None:
                raise  # not a WARC file at all: unreadable
            raise TruncatedInput(f"the WARC record after the one at byte {offset:,} does not parse "
                                 f"({err}): the Content-Length of the record at byte {offset:,} is "
                                 f"wrong, or the file is damaged there{_DECOMPRESSED if compressed else ''}"
                                 ) from None


_DECOMPRESSED = " (byte offsets in the decompressed stream)"


def _warc_document(record: WarcRecord, wanted: WarcRecordType, extracted: bool,
                   skipped: Counter) -> tuple | None:
    """(content, is_html, url, charset) of a record that is a document, None (counted) otherwise."""
    url = record.headers.get("WARC-Target-URI")
    if record.headers.get("Content-Length") is None:  # a header block cut off
        raise TruncatedInput(f"the WARC record at byte {record.stream_pos:,} has no Content-Length "
                             "(the file is cut off there)")
    if record.record_type == wanted and (extracted or _is_html_page(record, skipped)):
        body = _whole_body(record, record.reader.read())
        return (body.decode("utf-8", "replace"), False, url) if extracted else (
            body, True, url, record.http_charset)
    if record.record_type != wanted:
        skipped[f"warc_{record.headers.get('WARC-Type', 'unknown')}"] += 1
    _whole_body(record, record.consume())
    return None


def _is_html_page(record: WarcRecord, skipped: Counter) -> bool:
    """Whether a response is an HTML page with status 200; why not is counted."""
    if not record.is_http or record.http_headers.status_code != 200:
        status = record.http_headers.status_code if record.is_http else 0
        skipped[f"http_{status // 100}xx" if status else "not_http"] += 1
        return False
    if (record.http_content_type or "").lower() not in _HTML_TYPES:
        skipped["not_html"] += 1
        return False
    return True


def _whole_body(record: WarcRecord, body: bytes | int) -> bytes | int:
    """The body read (or its length), when it is as long as the record says; TruncatedInput if not."""
    length = body if isinstance(body, int) else len(body)
    if length != record.content_length:
        raise TruncatedInput(f"the WARC record at byte {record.stream_pos:,} holds {length:,} of its "
                             f"{record.content_length:,} bytes (the file is cut off there)")
    return body


def parquet_row_groups(path: Path) -> list[int]:
    """Compressed bytes of each row group: what cuts a parquet file into pieces (an unreadable
    file is one piece, counted as unreadable when it is read)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
    except (pa.ArrowException, OSError):
        return [path.stat().st_size]
    return [sum(meta.row_group(g).column(c).total_compressed_size for c in range(meta.num_columns))
            for g in range(meta.num_row_groups)]


def parquet_documents(path: Path, piece: Piece, skipped: Counter, text_field: str) -> Iterator[RawDocument]:
    """The rows of row groups [piece.start, piece.end) of a parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise OSError(f"not a parquet file ({err})") from None
    columns = table.schema_arrow.names
    if text_field not in columns:
        raise ValueError(f"{path} has no column {text_field!r} (columns: {', '.join(columns)}); "
                         "name the text column with --text-field")
    kind = table.schema_arrow.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
        rows = sum(table.metadata.row_group(g).num_rows for g in range(piece.start, piece.end))
        log.warning("%s: column %r holds %s, not text: its %d rows (of row groups %d-%d) are counted as "
                    "text_field_not_text; name the text column with --text-field", path, text_field, kind,
                    rows, piece.start, piece.end - 1)
        skipped["text_field_not_text"] += rows
        return
    row = sum(table.metadata.row_group(g).num_rows for g in range(piece.start))
    for group in range(piece.start, piece.end):
        batch = table.read_row_group(group, columns=[text_field] + (["url"] if "url" in columns else []))
        texts = batch.column(text_field).to_pylist()
        urls = batch.column("url").to_pylist() if "url" in columns else [None] * len(texts)
        for text, url in zip(texts, urls):
            if isinstance(text, str):
                yield RawDocument(piece.file << KEY_FILE_SHIFT | row, str(path), text, False,
                                  url if isinstance(url, str) else None)
            else:
                skipped["no_text_field"] += 1
            row += 1
