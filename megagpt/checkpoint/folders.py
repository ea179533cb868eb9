"""A checkpoint folder's names, `latest`, retention and atomic replacement."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LATEST = "latest"
TAG = re.compile(r"step(\d{8})")


class CheckpointError(ValueError):
    """A checkpoint or model folder that cannot be used as asked; the message names the file and the fix."""


class NoSpaceForCheckpoint(CheckpointError):
    """A save ran out of disk space (or quota); its partial folder is gone, `latest` unchanged."""


class DamagedCheckpoint(CheckpointError):
    """A file of a checkpoint is missing, truncated or altered since it was saved."""


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def published(folder: Path) -> list[Path]:
    """The complete checkpoints in `folder`, oldest first."""
    found = [p for p in folder.iterdir() if p.is_dir() and TAG.fullmatch(p.name)] if folder.is_dir() else []
    return sorted(found, key=lambda p: p.name)


def prune(folder: Path, keep_last: int, keep: Path | None = None) -> list[Path]:
    """Delete all but the newest `keep_last` published checkpoints, never `keep` nor the one `latest`
    names (which "newest" by step number can miss when the folder holds a longer run's checkpoints);
    returns the deleted."""
    protected = {p.resolve() for p in (keep, _named_by_latest(folder)) if p is not None}
    doomed = [p for p in published(folder)[:-keep_last] if p.resolve() not in protected]
    for path in doomed:
        shutil.rmtree(path)
    return doomed


def latest(folder: Path) -> Path | None:
    """The published checkpoint `latest` names, or None when there is none."""
    pointer = folder / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    if not TAG.fullmatch(name):
        found = published(folder)
        fix = (f"write the name of the newest good one ({found[-1].name}) into it" if found
               else "no checkpoint is here: delete it")
        raise CheckpointError(f"{pointer} holds {name!r}, not a checkpoint name like step00000050: {fix}")
    path = folder / name
    if not path.is_dir():
        raise CheckpointError(
            f"{pointer} names {path.name}, which is missing: restore it or delete {pointer}"
        )
    return path


def _named_by_latest(folder: Path) -> Path | None:
    try:
        return latest(folder)
    except CheckpointError:
        return None


def previous(path: Path) -> Path | None:
    """The published checkpoint saved before `path` in its folder, if any."""
    earlier = [p for p in published(path.parent) if p.name < path.name]
    return earlier[-1] if earlier else None


def resolve(path: str | Path) -> Path:
    """The checkpoint or model folder `path` means: itself, or what `latest` names in it, in its
    checkpoints/ (a run folder)."""
    path = Path(path)
    for candidate in (path, path / "checkpoints"):
        found = latest(candidate) if candidate.is_dir() else None
        if found is not None:
            return found
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


@contextmanager
def replacing_folder(out: Path, force: bool = False) -> Iterator[Path]:
    """A temporary sibling of `out` to write into; on success it takes `out`'s place, on failure it
    is removed and `out` is as it was. A non-empty `out` is refused unless `force`.

    The swap is two renames (old aside, new in): a crash between them leaves both folders on disk,
    the old one as .NAME.old-PID, never a half-written `out`."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out} is a file, not a folder: choose another output folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise CheckpointError(f"{out} is not empty: choose a new folder, or pass --force to replace it "
                              "(the new one is written beside it and swapped in only when complete)")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Named by process, made with the umask's permissions (tempfile's would make the result 0700).
    tmp, old = (out.with_name(f".{out.name}.{kind}-{os.getpid()}") for kind in ("tmp", "old"))
    for stale in (tmp, old):  # left by a process of the same id that crashed
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replaced = out.exists()
    if replaced:
        os.replace(out, old)
    os.replace(tmp, out)
    if replaced:
        shutil.rmtree(old)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())  # on disk before it is renamed in: never an empty `latest` after a crash
    os.replace(tmp, path)
