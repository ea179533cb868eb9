"""Documents from the formats the field distributes crawls and corpora in: Common Crawl WARC and
WET files (fastwarc) and parquet data sets (pyarrow).

- WARC: the HTML responses (status 200, Content-Type text/html or application/xhtml+xml), with the
  record's target URI as the document's URL (so the domain blocklist applies) and the charset of
  the HTTP header when it has one. Every other record is counted by reason: `warc_request`,
  `warc_metadata`, ... for other record types, `http_3xx` / `http_4xx` / `http_5xx`, `not_html`.
  gzip, zstd and lz4 compressed files are detected by fastwarc. A WARC file is one piece of work
  (compressed records cannot be found without reading from the start); the key of a record is
  its place in the file.
- WET: the conversion records' text (already extracted: no HTML extraction) with their URI.
- parquet: a text column (`--text-field`, default `text`) and, when there is one, `url`; read a
  row group at a time, so a chunk of a large file is a range of row groups and memory stays
  bounded by a row group. The key of a row is its row number in the file.

Imported only when such a file is read, so a build of HTML and JSON lines never loads pyarrow.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from fastwarc.warc import ArchiveIterator, WarcRecordType

from pipelines.documents import KEY_FILE_SHIFT, Piece, RawDocument

_HTML_TYPES = ("text/html", "application/xhtml+xml")


def warc_documents(path: Path, piece: Piece, skipped: Counter, *, extracted: bool) -> Iterator[RawDocument]:
    """The HTML responses of a WARC file (or, `extracted`, the text of a WET file's conversions)."""
    wanted = WarcRecordType.conversion if extracted else WarcRecordType.response
    for number, record in enumerate(ArchiveIterator(str(path), parse_http=not extracted,
                                                    record_types=WarcRecordType.any_type)):
        key = piece.file << KEY_FILE_SHIFT | number
        url = record.headers.get("WARC-Target-URI")
        if record.record_type != wanted:
            skipped[f"warc_{record.headers.get('WARC-Type', 'unknown')}"] += 1
        elif extracted:
            yield RawDocument(key, str(path), record.reader.read().decode("utf-8", "replace"), False, url)
        elif not record.is_http or record.http_headers.status_code != 200:
            status = record.http_headers.status_code if record.is_http else 0
            skipped[f"http_{status // 100}xx" if status else "not_http"] += 1
        elif (record.http_content_type or "").lower() not in _HTML_TYPES:
            skipped["not_html"] += 1
        else:
            yield RawDocument(key, str(path), record.reader.read(), True, url, record.http_charset)


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
