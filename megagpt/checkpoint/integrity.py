"""checksums.json: size and xxh3-128 hash of every file of a checkpoint, written at save, checked at use."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch.distributed as dist
import xxhash

from megagpt.checkpoint.folders import TAG, DamagedCheckpoint, previous

CHECKSUMS = "checksums.json"


def write_checksums(path: Path, rank: int = 0, world: int = 1, group: dist.ProcessGroup | None = None
                    ) -> None:
    """Record size and xxh3-128 hash of every file under `path` in checksums.json. With world > 1 a
    collective over `group` (default: the world): each rank hashes a share of the files (reading
    back what was just written, from the page cache) and rank 0 writes the merged list."""
    names = _files(path)
    mine = {name: _digest(path / name) for name in names[rank::world]}
    shares = [mine]
    if world > 1:
        shares = [None] * world
        dist.all_gather_object(shares, mine, group=group)
    if rank == 0:
        merged = {name: entry for share in shares for name, entry in share.items()}
        (path / CHECKSUMS).write_text(json.dumps(dict(sorted(merged.items())), indent=1) + "\n")


def verify(path: Path, names: list[str] | None = None, rank: int = 0, world: int = 1) -> None:
    """Raise DamagedCheckpoint naming the first file of `path` (of `names`, when given) that is
    missing or differs from checksums.json, and the checkpoint to use instead. With world > 1 a
    collective: each rank checks a share and all raise the same error."""
    record = path / CHECKSUMS
    try:
        expected = json.loads(record.read_text())
    except FileNotFoundError:
        problems = [f"{record} is missing (every checkpoint and model folder megagpt writes has one)"]
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        problems = [f"{record} is unreadable ({e})"]
    else:
        wanted = sorted(expected) if names is None else names
        problems = [p for name in wanted[rank::world] if (p := _problem(path / name, expected.get(name)))]
    if world > 1:
        shares: list[list[str] | None] = [None] * world
        dist.all_gather_object(shares, problems)
        problems = [p for share in shares for p in share]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        before = previous(path)
        if before is not None:
            fix = (f"the previous checkpoint is {before}: resume from it with train.resume={before} "
                   "(train.resume=auto falls back to it by itself)")
        elif TAG.fullmatch(path.name):
            fix = "no earlier checkpoint is in its folder: start again in a new log.dir"
        else:  # a model folder (convert from-hf, finetune)
            fix = "restore the folder from where it came, or write the model folder again"
        raise DamagedCheckpoint(f"checkpoint {path} is damaged: {problems[0]}{more}; {fix}")


def _files(path: Path) -> list[str]:
    return sorted(str(f.relative_to(path)) for f in path.rglob("*") if f.is_file() and f.name != CHECKSUMS)


def _digest(file: Path) -> dict[str, Any]:
    with file.open("rb") as f:
        digest = hashlib.file_digest(f, xxhash.xxh3_128).hexdigest()
        return {"bytes": os.fstat(f.fileno()).st_size, "xxh3_128": digest}


def _problem(file: Path, expected: dict[str, Any] | None) -> str | None:
    """What is wrong with `file` against its checksums.json entry, or None when nothing is."""
    if expected is None:
        return f"{file} is not listed in {CHECKSUMS}"
    if not file.is_file():
        return f"{file} is missing"
    size = file.stat().st_size
    if size != expected["bytes"]:
        return f"{file} has {size} bytes, {expected['bytes']} when saved (truncated or overwritten)"
    if _digest(file)["xxh3_128"] != expected["xxh3_128"]:
        return f"{file} does not match its checksum in {CHECKSUMS} (overwritten since it was saved)"
    return None
