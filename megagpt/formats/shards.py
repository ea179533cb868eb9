"""The token shard format shared by pipelines (writer) and megagpt.training.data (reader).

A shard folder holds `corpus-000000-000.tar`, ... (pipelines.build writes the documents of
each chunk of its input as `corpus-<chunk>-<part>.tar`: chunk_shard_pattern) and
`manifest.json`. Each tar is a webdataset shard: one sample per document, the tar members
`KEY.tokens.npy` (the document's token ids ending in
end-of-text; uint16 when the vocabulary fits, else uint32) and `KEY.meta.json` (source, url when
known), KEY being webdataset's `__key__` (the hex digest of the document's text). The manifest
names the tokenizer (file beside it, sha256, vocab size, eos id), the
shard list with per-shard document and token counts and the sha256 of each tar file, and the
per-stage counts of the build. Readers given the sha256 verify it: the reader holds the whole
file in memory anyway, and hashing it costs little next to reading it (bench/shard_integrity.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

SHARD_PATTERN = "corpus-{:06d}.tar"  # ShardWriter's names when not given a pattern
MANIFEST_NAME = "manifest.json"
FORMAT = "megagpt-shards/1"


class ShardError(ValueError):
    """A shard folder or file that cannot be read; the message names it and the fix."""


def chunk_shard_pattern(chunk: int) -> str:
    """The ShardWriter pattern of a corpus build's shards of input chunk `chunk`."""
    return f"corpus-{chunk:06d}-{{:03d}}.tar"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


class ShardWriter:
    """Writes documents into size-capped webdataset tars; `shards` lists what was written."""

    def __init__(self, out_dir: str | Path, vocab_size: int, max_shard_tokens: int = 50_000_000,
                 pattern: str = SHARD_PATTERN):
        self.out_dir = Path(out_dir)
        self.pattern = pattern  # file names: pattern.format(shard number); the folder is made at the first
        self.dtype = token_dtype(vocab_size)
        self.max_shard_tokens = max_shard_tokens
        self.shards: list[dict[str, Any]] = []
        self._sink: BinaryIO | None = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, key: str, tokens: np.ndarray, meta: dict[str, Any]) -> None:
        if self._sink is None or self.shards[-1]["tokens"] >= self.max_shard_tokens:
            self._open_next()
        buf = io.BytesIO()
        np.save(buf, np.asarray(tokens, dtype=self.dtype), allow_pickle=False)
        meta_json = json.dumps(meta, ensure_ascii=False).encode()
        # a webdataset sample: the files KEY.FIELD
        self._sink.write(tar_member(f"{key}.tokens.npy", buf.getvalue()))
        self._sink.write(tar_member(f"{key}.meta.json", meta_json))
        self.shards[-1]["documents"] += 1
        self.shards[-1]["tokens"] += len(tokens)

    def close(self) -> None:
        if self._sink is not None:
            # tarfile's end of archive: two empty blocks, then zeros to a whole record
            end = self._sink.tell() + 2 * tarfile.BLOCKSIZE
            self._sink.write(bytes(2 * tarfile.BLOCKSIZE + -end % tarfile.RECORDSIZE))
            self._sink.close()
            self._sink = None
            # Read back from the page cache: the checksum is of the bytes that reached the file.
            shard = self.shards[-1]
            with (self.out_dir / shard["name"]).open("rb") as f:
                shard["sha256"] = hashlib.file_digest(f, "sha256").hexdigest()

    def _open_next(self) -> None:
        self.close()
        name = self.pattern.format(len(self.shards))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._sink = (self.out_dir / name).open("wb")
        self.shards.append({"name": name, "documents": 0, "tokens": 0})


_USTAR_MODE_TO_MTIME = b"0000444\0" + b"0000000\0" * 2  # mode 0444, owner and group 0
# mtime 0, the checksum's field as spaces, a regular file, no link, the magic, no owner names or prefix
_USTAR_AFTER_SIZE = b"00000000000\0" + b" " * 8 + b"0" + bytes(100) + b"ustar\x0000" + bytes(247)


def tar_member(name: str, data: bytes) -> bytes:
    """A regular file as tarfile writes it in USTAR format with mode 0444, mtime 0 and owner 0
    (what keeps builds byte-identical): the header block, the data, zeros to a whole block. The
    header is packed here, a tenth of tarfile's cost a member; a name over 100 bytes, which USTAR
    splits in two fields, is left to tarfile."""
    encoded = name.encode()
    if len(encoded) > 100:
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), 0o444
        header = info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
    else:
        header = bytearray(encoded.ljust(100, b"\0") + _USTAR_MODE_TO_MTIME + b"%011o\0" % len(data)
                           + _USTAR_AFTER_SIZE)
        header[148:155] = b"%06o\0" % sum(header)  # the checksum counts its own field as spaces
    return bytes(header) + data + bytes(-len(data) % tarfile.BLOCKSIZE)


def read_shard(path: str | Path, sha256: str | None = None
               ) -> Iterator[tuple[str, np.ndarray, dict[str, Any]]]:
    """Yield (key, tokens, meta) of each document in a shard, naming the file if it is damaged.

    With `sha256` (the manifest's) the whole file is read and checked first, so that bytes altered
    since the build are refused even where they would still parse."""
    path = Path(path)
    fix = "rebuild the folder with python -m pipelines.build"
    try:
        source: dict[str, Any] = {"name": path}
        if sha256 is not None:
            raw = path.read_bytes()
            if hashlib.sha256(raw).hexdigest() != sha256:
                raise ShardError(f"{path} does not match its sha256 in {path.parent / MANIFEST_NAME}: "
                                 f"it changed after the build (disk damage, or overwritten); {fix}")
            source = {"fileobj": io.BytesIO(raw)}
        with tarfile.open(**source) as tar:
            samples: dict[str, dict[str, bytes]] = {}
            for member in tar:
                key, _, field = member.name.partition(".")
                data = tar.extractfile(member)
                if data is None:
                    continue
                samples.setdefault(key, {})[field] = data.read()
                if {"tokens.npy", "meta.json"} <= samples[key].keys():
                    sample = samples.pop(key)
                    tokens = np.load(io.BytesIO(sample["tokens.npy"]), allow_pickle=False)
                    yield key, tokens, json.loads(sample["meta.json"])
    except ShardError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError) as err:
        raise ShardError(f"{path} is damaged ({err}); {fix}") from None
    if samples:
        raise ShardError(f"{path}: samples {sorted(samples)[:3]} lack tokens.npy or meta.json; {fix}")


def read_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise ShardError(f"{path} not found: {folder} is not a shard folder; build one with "
                         "python -m pipelines.build --input RAW --output FOLDER")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ShardError(f"{path} is not valid JSON ({err}); rebuild the folder") from None
    if manifest.get("format") != FORMAT:
        raise ShardError(f"{path} has format {manifest.get('format')!r}, expected {FORMAT!r}; rebuild it")
    return manifest


def write_manifest(folder: str | Path, manifest: dict[str, Any]) -> None:
    """Write the manifest last and atomically: a folder with a manifest is a complete folder."""
    path = Path(folder) / MANIFEST_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
