"""Raw documents from files: HTML pages, plain text files, JSON lines, WARC / WET, parquet.

Inputs are any mix of files and folders (searched recursively) of `.html`, `.htm`, `.html.gz`,
`.txt`, `.jsonl` / `.jsonl.gz` / `.jsonl.zst` (one object a line, field `text` or --text-field,
optional `url`), `.warc(.gz/.zst/.lz4)`, `.warc.wet(.gz)` and `.parquet` (pipelines/archives.py).
Files are read in sorted path order so a build is deterministic. A line, record or file that
cannot be read or is not a document is skipped and counted under its reason, never dropped
silently.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import zstandard

from pipelines.compressed import open_binary
from pipelines.documents import KEY_FILE_SHIFT, MAX_FILES, Piece, RawDocument

HTML_SUFFIXES = (".html", ".htm", ".html.gz", ".htm.gz")
TEXT_SUFFIXES = (".txt", ".txt.gz")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")
WET_SUFFIXES = (".warc.wet", ".warc.wet.gz", ".wet", ".wet.gz")
WARC_SUFFIXES = (".warc", ".warc.gz", ".warc.zst", ".warc.lz4")
PARQUET_SUFFIXES = (".parquet",)
SUFFIXES = HTML_SUFFIXES + TEXT_SUFFIXES + JSONL_SUFFIXES + WET_SUFFIXES + WARC_SUFFIXES + PARQUET_SUFFIXES
log = logging.getLogger("pipelines.sources")


@dataclass(frozen=True)
class Chunk:
    """The unit of work of a build: consecutive pieces of about `chunk_bytes` of input.

    Chunks cover the documents in key order, so the documents of chunk i all come before those of
    chunk i + 1. How the input is cut into chunks changes no decision of the build (documents are
    ordered by key, not by chunk), only the shard boundaries.
    """

    id: int
    pieces: tuple[Piece, ...]

    @property
    def first_key(self) -> int:
        return self.pieces[0].file << KEY_FILE_SHIFT | self.pieces[0].start


def plan_chunks(files: Sequence[Path], chunk_bytes: int) -> list[Chunk]:
    """Cut the input into chunks of about `chunk_bytes` (compressed files are never split; plain
    .jsonl files are split anywhere, parquet files between row groups)."""
    if len(files) >= MAX_FILES:
        raise ValueError(f"{len(files)} input files: at most {MAX_FILES - 1} are supported; merge some")
    chunks: list[Chunk] = []
    pieces: list[Piece] = []
    filled = 0
    for index, path in enumerate(files):
        for piece, size in _pieces(index, path, chunk_bytes, filled):
            pieces.append(piece)
            filled += size
            if filled >= chunk_bytes:
                chunks.append(Chunk(len(chunks), tuple(pieces)))
                pieces, filled = [], 0
    if pieces:
        chunks.append(Chunk(len(chunks), tuple(pieces)))
    return chunks


def _pieces(index: int, path: Path, chunk_bytes: int, filled: int) -> Iterator[tuple[Piece, int]]:
    """(piece, bytes) of one file, the first one filling the chunk that is `filled` bytes full."""
    if path.name.endswith(PARQUET_SUFFIXES):
        from pipelines.archives import parquet_row_groups

        for group, size in enumerate(parquet_row_groups(path)):
            yield Piece(index, group, group + 1), size
        return
    size = path.stat().st_size
    if not path.name.endswith(".jsonl"):
        yield Piece(index, 0, size), size
        return
    start = 0
    while start < size or start == 0:
        take = min(size - start, max(1, chunk_bytes - filled))
        yield Piece(index, start, start + take), take
        start, filled = start + take, 0
        if size == 0:
            return


def list_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """The input files, sorted; a path that does not exist or holds nothing usable is an error."""
    return list_files(inputs, SUFFIXES, "--input")


def list_files(items: Sequence[str | Path], suffixes: tuple[str, ...], option: str, kinds: str = ""
               ) -> list[Path]:
    """The files of `items` (folders searched for `suffixes`), each folder's sorted; an item that does
    not exist, a folder holding none and a file of another kind are errors naming `option`."""
    files: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.name.endswith(suffixes))
            if not found:
                raise FileNotFoundError(f"{option} {item} holds no {', '.join(suffixes)} files")
            files.extend(found)
        elif item.is_file():
            if not item.name.endswith(suffixes):
                raise ValueError(f"{option} {item}: unknown kind of file; expected one of "
                                 f"{', '.join(suffixes)}{kinds}")
            files.append(item)
        else:
            raise FileNotFoundError(f"{option} {item} does not exist")
    return files


def read_documents(files: Sequence[Path], skipped: Counter, text_field: str = "text",
                   truncated: Counter | None = None) -> Iterator[RawDocument]:
    """Every document of `files`; unreadable ones are counted in `skipped` by reason."""
    for chunk in plan_chunks(files, 1 << 62):
        yield from read_chunk(files, chunk, skipped, text_field, truncated)


def read_chunk(files: Sequence[Path], chunk: Chunk, skipped: Counter, text_field: str = "text",
               truncated: Counter | None = None) -> Iterator[RawDocument]:
    """The documents of a chunk. `truncated` gets, for each file that broke off after some of its
    documents were read, how many were (they stay; the file is counted as `truncated_file`)."""
    for piece in chunk.pieces:
        yield from read_piece(files[piece.file], piece, skipped, text_field, truncated)


def read_piece(path: Path, piece: Piece, skipped: Counter, text_field: str = "text",
               truncated: Counter | None = None) -> Iterator[RawDocument]:
    """The documents of one piece of `path`. A file that cannot be read is counted (once, by the
    piece that starts it) and named in the log: `unreadable_file` when none of its documents
    were read, `truncated_file` (and its documents in `truncated`) when it broke off later."""
    read = 0
    try:
        for doc in _piece_documents(path, piece, skipped, text_field):
            yield doc
            read += 1
    except (OSError, EOFError, gzip.BadGzipFile, zstandard.ZstdError) as err:
        if read:
            log.warning("input %s breaks off after %d documents (%s): they are kept, the rest of the "
                        "file is lost; counted as truncated_file", path, read, err)
            skipped["truncated_file"] += 1
            if truncated is not None:
                truncated[str(path)] += read
        elif piece.start == 0:
            log.warning("skipping unreadable input %s (%s)", path, err)
            skipped["unreadable_file"] += 1


def _piece_documents(path: Path, piece: Piece, skipped: Counter, text_field: str) -> Iterator[RawDocument]:
    key = piece.file << KEY_FILE_SHIFT
    if path.name.endswith(JSONL_SUFFIXES):
        yield from _jsonl_documents(path, piece, skipped, text_field)
        return
    if path.name.endswith(WET_SUFFIXES + WARC_SUFFIXES + PARQUET_SUFFIXES):
        from pipelines.archives import parquet_documents, warc_documents

        if path.name.endswith(PARQUET_SUFFIXES):
            yield from parquet_documents(path, piece, skipped, text_field)
        else:
            yield from warc_documents(path, piece, skipped, extracted=path.name.endswith(WET_SUFFIXES))
        return
    data = read_bytes(path)
    if path.name.endswith(HTML_SUFFIXES):
        yield RawDocument(key, str(path), data, is_html=True)
        return
    try:
        yield RawDocument(key, str(path), data.decode("utf-8"), is_html=False)
    except UnicodeDecodeError:  # not UTF-8: counted, not guessed at
        log.warning("skipping %s: not UTF-8", path)
        skipped["bad_utf8"] += 1


def read_bytes(path: Path) -> bytes:
    """A file's bytes, decompressed when it ends in .gz or .zst."""
    with open_binary(path) as f:
        return f.read()


def _jsonl_lines(path: Path, piece: Piece) -> Iterator[tuple[int, bytes]]:
    """(offset, line) of the lines of `path` that start inside the piece; a compressed file is
    read whole, from the start of its decompressed stream."""
    with open_binary(path) as f:
        if path.suffix in (".gz", ".zst"):
            offset, end = 0, float("inf")
        else:
            offset, end = piece.start, piece.end
            if offset > 0:  # the line running into the piece belongs to the piece before
                f.seek(offset - 1)
                offset += len(f.readline()) - 1
        reader = io.BufferedReader(f, 1 << 20) if not isinstance(f, io.BufferedReader) else f
        while offset < end:
            line = reader.readline()
            if not line:
                return
            yield offset, line
            offset += len(line)


def _jsonl_documents(path: Path, piece: Piece, skipped: Counter, text_field: str) -> Iterator[RawDocument]:
    for offset, line in _jsonl_lines(path, piece):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            skipped["bad_json"] += 1
            continue
        text = record.get(text_field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            skipped["no_text_field"] += 1
            continue
        url = record.get("url")
        yield RawDocument(piece.file << KEY_FILE_SHIFT | offset, str(path), text, is_html=False,
                          url=url if isinstance(url, str) else None)


def parse_named(items: Sequence[str], option: str) -> dict[str, Path]:
    """NAME=PATH pairs (eval sets, reference corpora); the error names the option and the expected form."""
    named: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"{option} {item!r}: expected NAME=PATH, e.g. lambada=data/eval/lambada")
        if not Path(path).exists():
            raise FileNotFoundError(f"{option} {item}: {path} does not exist")
        named[name] = Path(path)
    return named
