"""Raw documents from files: HTML pages, plain text files, and JSON lines.

Inputs are any mix of files and folders (searched recursively) of `.html`, `.htm`, `.html.gz`,
`.txt` and `.jsonl` / `.jsonl.gz` / `.jsonl.zst` (one object a line, field `text`, optional `url`). Files are
read in sorted path order so a build is deterministic. A line or file that cannot be read is
skipped and counted under its reason, never dropped silently.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import zstandard

HTML_SUFFIXES = (".html", ".htm", ".html.gz", ".htm.gz")
TEXT_SUFFIXES = (".txt", ".txt.gz")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")
SUFFIXES = HTML_SUFFIXES + TEXT_SUFFIXES + JSONL_SUFFIXES


@dataclass
class RawDocument:
    key: str  # stable and unique within a build: file path, plus the line number for jsonl
    source: str  # the input file it came from
    content: str | bytes  # bytes for HTML (the extractor finds its encoding), text otherwise
    is_html: bool
    url: str | None = None


def list_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """The input files, sorted; a path that does not exist or holds nothing usable is an error."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES))
            if not found:
                raise FileNotFoundError(f"--input {item} holds no {', '.join(SUFFIXES)} files")
            files.extend(found)
        elif item.is_file():
            if not item.name.endswith(SUFFIXES):
                raise ValueError(f"--input {item}: unknown kind of file; expected one of "
                                 f"{', '.join(SUFFIXES)}")
            files.append(item)
        else:
            raise FileNotFoundError(f"--input {item} does not exist")
    return files


def read_documents(files: Sequence[Path], skipped: Counter) -> Iterator[RawDocument]:
    """Every document of `files`; unreadable ones are counted in `skipped` by reason."""
    for path in files:
        try:
            data = read_bytes(path)
        except (OSError, EOFError, gzip.BadGzipFile, zstandard.ZstdError):
            skipped["unreadable_file"] += 1
            continue
        if path.name.endswith(HTML_SUFFIXES):
            yield RawDocument(str(path), str(path), data, is_html=True)
        elif path.name.endswith(TEXT_SUFFIXES):
            try:
                yield RawDocument(str(path), str(path), data.decode("utf-8"), is_html=False)
            except UnicodeDecodeError:  # not UTF-8: counted, not guessed at
                skipped["bad_utf8"] += 1
        else:
            yield from _jsonl_documents(path, data, skipped)


def read_bytes(path: Path) -> bytes:
    """A file's bytes, decompressed when it ends in .gz or .zst."""
    if path.suffix == ".gz":
        return gzip.decompress(path.read_bytes())
    if path.suffix == ".zst":
        with path.open("rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as reader:
            return reader.read()
    return path.read_bytes()


def _jsonl_documents(path: Path, data: bytes, skipped: Counter) -> Iterator[RawDocument]:
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            skipped["bad_json"] += 1
            continue
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str):
            skipped["no_text_field"] += 1
            continue
        url = record.get("url")
        yield RawDocument(f"{path}:{number}", str(path), text, is_html=False,
                          url=url if isinstance(url, str) else None)
