"""Reddit submission dumps as published, streamed a line at a time with bounded memory.

Pushshift-style dumps (`RS_YYYY-MM.zst`) are zstd frames written with long windows (up to 2 GiB):
a decompressor must be told it may use such a window (`max_window_size=2**31`), or it refuses the
frame ("Frame requires too much memory for decoding"). The window is memory the decompressor
needs, so reading one dump costs up to 2 GiB whatever its size; `.bz2`, `.xz` and plain `.jsonl`
(older mirrors) cost a buffer. One dump is tens of GB, so it is never read whole.
"""

from __future__ import annotations

import bz2
import lzma
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import zstandard

from pipelines.sources import list_files

DUMP_SUFFIXES = (".zst", ".bz2", ".xz", ".jsonl", ".json", ".ndjson")
_BUFFER = 1 << 20


class DumpError(ValueError):
    """A dump that cannot be read to its end; the message names the file and the fix."""


def list_dumps(paths: list[str]) -> list[Path]:
    """The dump files given (folders searched for dump suffixes), sorted; missing ones are errors."""
    return list_files(paths, DUMP_SUFFIXES, "DUMP", " (Reddit submission dumps, RS_YYYY-MM.zst)")


def _zstd_blocks(raw: BinaryIO) -> Iterator[bytes]:
    """Decompressed blocks of a zstd file of one or more frames. A stream reader would end
    quietly at a truncated frame; this notices it (the frame never reaches its end)."""
    decoder = zstandard.ZstdDecompressor(max_window_size=2**31)  # long windows: see the docstring
    frame = decoder.decompressobj()
    started = False
    while chunk := raw.read(_BUFFER):
        while chunk:
            started = True
            yield frame.decompress(chunk)
            chunk = frame.unused_data if frame.eof else b""
            if frame.eof:
                frame, started = decoder.decompressobj(), bool(chunk)
    if started and not frame.eof:
        raise EOFError("the last zstd frame ends early")


def _blocks(raw: BinaryIO, name: str) -> Iterator[bytes]:
    if name.endswith(".zst"):
        yield from _zstd_blocks(raw)
        return
    stream = (bz2.BZ2File(raw) if name.endswith(".bz2") else
              lzma.LZMAFile(raw) if name.endswith(".xz") else raw)
    while block := stream.read(_BUFFER):
        yield block


def dump_lines(path: Path, progress: Callable[[int], None] | None = None) -> Iterator[bytes]:
    """The lines of a dump, decompressed; `progress(n)` is told of each n compressed bytes read."""
    with path.open("rb") as raw:
        seen = 0
        rest = b""
        try:
            # split blocks rather than readline: ~2x faster for short JSON lines
            for block in _blocks(raw, path.name):
                lines = (rest + block).split(b"\n")
                rest = lines.pop()
                yield from lines
                if progress is not None:
                    now = raw.tell()
                    progress(now - seen)
                    seen = now
        except (zstandard.ZstdError, OSError, EOFError, lzma.LZMAError) as err:
            raise DumpError(f"{path}: cannot be read past compressed byte {raw.tell():,} ({err}); the "
                            "file is truncated or corrupt: download it again (check its published "
                            "checksum)") from None
        if rest:
            yield rest
