"""Input files as byte streams, decompressed by their name (`.gz`, `.zst`), where a file that ends
early is an error, never a quiet early end.

Python's gzip reader raises EOFError at a cut-off member. zstandard's stream reader does not: at a
frame cut off in the middle it returns what it decoded and then an empty read, as if the file
ended there, so a truncated `.jsonl.zst` lost its tail without a word. `_ZstdStream` decodes
frame by frame and raises EOFError when the file ends inside one.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import BinaryIO

import zstandard

_READ = 1 << 20  # compressed bytes read at a time


class TruncatedInput(EOFError):
    """The input ends before its end: the documents read up to here are kept, the rest is lost."""


def open_binary(path: Path) -> BinaryIO:
    """A file opened for reading as a stream, decompressed when it ends in .gz or .zst."""
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    if path.suffix == ".zst":
        return io.BufferedReader(_ZstdStream(path.open("rb")), _READ)
    return path.open("rb")


class _ZstdStream(io.RawIOBase):
    """The decompressed bytes of a zstd file of one or more frames; EOFError at a cut-off frame."""

    def __init__(self, raw: BinaryIO):
        self._raw = raw
        self._decoder = zstandard.ZstdDecompressor()
        self._frame = self._decoder.decompressobj()
        self._started = False  # a frame has begun and not ended
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # noqa: ANN001 (a writable buffer)
        while not self._pending:
            compressed = self._raw.read(_READ)
            if not compressed:
                if self._started:
                    raise TruncatedInput("the zstd stream ends inside a frame (the file is cut off)")
                return 0
            self._pending = memoryview(self._decode(compressed))
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]  # a view: no copy of the rest
        return n

    def _decode(self, compressed: bytes) -> bytes:
        out = []
        while compressed:
            self._started = True
            out.append(self._frame.decompress(compressed))
            if not self._frame.eof:
                break
            compressed = self._frame.unused_data  # the next frame begins in the same read
            self._frame, self._started = self._decoder.decompressobj(), False
        return b"".join(out)

    def close(self) -> None:
        self._raw.close()
        super().close()
