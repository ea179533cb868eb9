"""What every reader of raw input yields: documents, and the pieces of input files they come from."""

from __future__ import annotations

from dataclasses import dataclass

KEY_FILE_SHIFT = 40  # a document's key: file index << 40 | byte offset (files up to 1 TiB)
MAX_FILES = 1 << (64 - KEY_FILE_SHIFT)


@dataclass
class RawDocument:
    key: int  # place in the global order: (sorted file index << 40) | offset of its line in the file
    source: str  # the input file it came from
    content: str | bytes  # bytes for HTML (the extractor finds its encoding), text otherwise
    is_html: bool
    url: str | None = None
    charset: str | None = None  # of HTML bytes, when the HTTP header says it


@dataclass(frozen=True)
class Piece:
    """Bytes [start, end) of input file `file`: a whole file, or a slice of a plain .jsonl file
    (a slice holds the lines that start inside it); for parquet, row groups [start, end)."""

    file: int
    start: int
    end: int
