"""The work area of a corpus build: per-unit results on disk, claimed dynamically, resumable.

A build cuts its work into units (a chunk of input documents, a hash range of digests, ...). Each
unit's results are files under `OUT.build/work/<stage>/`, written to a temporary name and renamed,
and a unit is finished when its marker `<stage>/<unit>.done.json` exists (written last). Ranks
(MPI ranks, and the worker processes of each) take units by creating a claim file with O_EXCL:
whoever creates it first does the unit, so a slow unit never holds the others back. Claims live in
a folder of their own for each attempt, so a unit claimed by a killed attempt is done again by the
next one, while finished units are skipped. The same command started again after a crash therefore
continues where the finished units end.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xxhash
from tqdm import tqdm

from pipelines.mpi import settle


def content_hash(path: Path) -> str:
    """xxh3-128 of a file's bytes: how a continued build knows an input is unchanged. Size and
    mtime miss a file rewritten in place with its old size and mtime (rsync -t, cp -p, a restored
    backup); the hash reads every input once, at several GB/s (docs/corpus.md has the cost)."""
    digest = xxhash.xxh3_128()
    with path.open("rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


class WorkArea:
    def __init__(self, root: Path):
        self.root = root
        self.work = root / "work"
        self.out = root / "out"  # becomes the build's output folder when everything succeeded
        self._claims: Path | None = None

    def stage(self, name: str) -> Path:
        folder = self.work / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def done(self, stage: str, unit: int) -> bool:
        return (self.work / stage / f"{unit:06d}.done.json").is_file()

    def finish(self, stage: str, unit: int, record: dict[str, Any]) -> None:
        """Mark `unit` of `stage` finished with a small JSON record (its counts, its shard list)."""
        save_json(self.stage(stage) / f"{unit:06d}.done.json", record)

    def record(self, stage: str, unit: int) -> dict[str, Any]:
        return json.loads((self.work / stage / f"{unit:06d}.done.json").read_text())

    def file(self, stage: str, unit: int, name: str) -> Path:
        return self.stage(stage) / f"{unit:06d}.{name}"

    def start_attempt(self, comm: Any) -> None:
        """A fresh claims folder for this attempt, named by rank 0 and known to every rank."""
        name = uuid.uuid4().hex if comm.Get_rank() == 0 else None
        name = comm.bcast(name, root=0)
        self._claims = self.work / "claims" / name
        if comm.Get_rank() == 0:
            old = self.work / "claims"
            if old.is_dir():
                for stale in old.iterdir():
                    shutil.rmtree(stale, ignore_errors=True)
            self._claims.mkdir(parents=True)
        comm.Barrier()

    def claim(self, stage: str, unit: int) -> bool:
        """True for the one process that claims `unit` first in this attempt."""
        assert self._claims is not None, "start_attempt first"
        try:
            os.close(os.open(self._claims / f"{stage}-{unit:06d}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True


def run_units(area: WorkArea, comm: Any, stage: str, units: Sequence[int], task: Callable[[int], None],
              workers: int = 1) -> None:
    """Run `task(unit)` once for every unit of `stage` not yet finished, spread over the ranks and
    their `workers` processes by claims; return when every rank is through."""
    pending = [u for u in units if not area.done(stage, u)]
    rank = comm.Get_rank()
    progress = tqdm(total=len(pending), desc=stage, unit="unit", leave=False, disable=rank != 0)
    if workers > 1 and len(pending) > 1:
        global _TASK
        _TASK = (area, stage, task)
        # fork shares what is already imported and built (trafilatura, numba code, eval filters)
        with multiprocessing.get_context("fork").Pool(min(workers, len(pending))) as pool:
            for _ in pool.imap_unordered(_claim_and_run, pending):
                progress.update()
    else:
        for unit in pending:
            if area.claim(stage, unit):
                task(unit)
            progress.update()
    progress.close()
    settle(comm)


_TASK: tuple[WorkArea, str, Callable[[int], None]] | None = None  # set before the pool forks


def _claim_and_run(unit: int) -> None:
    area, stage, task = _TASK
    if area.claim(stage, unit):
        task(unit)


def save_json(path: Path, record: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, ensure_ascii=False, indent=1) + "\n")
    os.replace(tmp, path)


def save_array(path: Path, array: np.ndarray) -> None:
    """np.save under a temporary name, then renamed: a file that exists is complete."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        np.save(f, array, allow_pickle=False)
    os.replace(tmp, path)
