"""Build a training corpus: raw documents -> text -> token shards + manifest, on one or many MPI ranks.

    python -m pipelines.build --input data/sample/html --output data/shards \
        --train-tokenizer --vocab-size 8192 [--decontaminate lambada=data/eval/lambada/...]
    mpiexec -n 4 python -m pipelines.build ...          # the same corpus, the work split over 4 ranks

Stages: read -> extract (HTML to text) -> clean -> filter (length, mostly text, blocked domains)
-> exact dedup -> near dedup (MinHash LSH) -> decontaminate (optional) -> split (train / valid by
a seeded hash of the text) -> tokenizer (trained on a sample of the train split, or given)
-> tokenize -> shards. OUT/ gets the train shards and OUT/valid/ the validation shards, each with
its manifest.json and a copy of the tokenizer. Every stage counts documents in, out and dropped by
reason, and the counts reconcile.

At scale: the input is cut into chunks (pipelines/sources.py) and every step is a set of units
(a chunk, or a hash range for the dedup decisions: pipelines/build_dedup.py) whose results are
files in the work area `OUT.build/` (pipelines/workarea.py); the tokenizer steps are in
pipelines/build_tokenizer.py. Ranks claim units as they go, so memory per rank is bounded
by a chunk or a hash range, never by the corpus, and no rank gathers documents, signatures or
tokens: rank 0 only sums counts and lists shards. Decisions depend on document keys (place in the
sorted input), never on which rank did what, so `-n K` writes the same files as `-n 1`. A build
that dies is continued by the same command; the finished output replaces OUT (with --force) only
at the very end, so a failed build never destroys a previous one.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import logging
import os
import resource
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zstandard

from megagpt.formats.shards import (
    FORMAT,
    MANIFEST_NAME,
    ShardWriter,
    chunk_shard_pattern,
    token_dtype,
    write_manifest,
)
from megagpt.formats.tokenizer import Tokenizer
from pipelines.build_dedup import DuplicateSteps
from pipelines.build_settings import (
    CONTAMINATED,
    DUPLICATE,
    LOW_QUALITY,
    NEAR_DUPLICATE,
    STEPS,
    TOKENIZER_FILE,
    TRAIN,
    VALID,
    BuildSettings,
)
from pipelines.build_tokenizer import TokenizerSteps, sample_hash
from pipelines.chunk_map import ChunkMapper
from pipelines.dedup import LOOSE_SIGMAS, recall_curve
from pipelines.documents import Piece
from pipelines.mpi import LocalComm, abort, settle, world
from pipelines.quality_model import keep
from pipelines.sources import Chunk, list_inputs, plan_chunks
from pipelines.workarea import WorkArea, content_hash, run_units, save_json

log = logging.getLogger("pipelines.build")


def build(inputs: Sequence[str | Path], output: str | Path, settings: BuildSettings | None = None, *,
          workers: int | None = None, force: bool = False, comm: Any = None,
          **options: Any) -> dict[str, Any]:
    """Build the corpus in `output` (and `output/valid`) and return its manifest (on every rank).

    `options` are BuildSettings' fields, for a call without `settings`. `workers`: processes a
    rank (default: all cores on one rank, 1 under MPI). A build into the same `output` continues
    from the finished units of an earlier attempt in `output`.build/.
    """
    comm = comm or world()
    settings = settings or BuildSettings(**options)
    output = Path(output)
    files = list_inputs(inputs)
    _check_output(output, inputs, force)
    if workers is None:
        workers = 1 if comm.Get_size() > 1 else len(os.sched_getaffinity(0))
    run = _Build(settings, files, WorkArea(Path(f"{output}.build")), comm, workers)
    run.start()
    run.map_chunks()
    run.decide_duplicates()
    run.decide_documents()
    run.make_tokenizer()
    run.tokenize()
    manifest = run.finish(output)
    return manifest


def _check_output(output: Path, inputs: Sequence[str | Path], force: bool) -> None:
    """Refuse, before any work, an output that would destroy or swallow an input."""
    target = output.resolve()
    for item in map(Path, inputs):
        source = item.resolve()
        if target == source or target in source.parents:
            raise ValueError(f"--output {output} holds the input {item}; write the corpus elsewhere")
        if source in target.parents:
            raise ValueError(f"--output {output} is inside the input folder {item}: a later build would "
                             "read its work files; write the corpus elsewhere")
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"--output {output} is a file; give a folder")
    if output.is_dir() and any(output.iterdir()) and not force:
        raise FileExistsError(f"--output {output} is not empty; pass --force to replace it "
                              "(the old corpus is replaced only once the new one is complete)")
    parent = next(p for p in target.parents if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise PermissionError(f"--output {output}: cannot write in {parent}; choose a writable folder")


class _Build(DuplicateSteps, TokenizerSteps):
    """One build's steps; each reads what the step before left in the work area."""

    def __init__(self, settings: BuildSettings, files: list[Path], area: WorkArea, comm: Any, workers: int):
        self.s, self.files, self.area, self.comm, self.workers = settings, files, area, comm, workers
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.eval_names = list(settings.decontaminate)
        self.chunks: list[Chunk] = []

    # -- plan ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Plan the chunks (rank 0); in a work area left by an earlier attempt, keep the finished
        steps whose inputs and settings are unchanged and redo the rest."""
        plan = None
        if self.rank == 0:
            total = sum(p.stat().st_size for p in self.files)
            chunks = plan_chunks(self.files, self.s.chunk_bytes(total))
            given = self.s.tokenizer and [self.s.tokenizer, Tokenizer.load(self.s.tokenizer).sha256]
            plan = {"settings": self.s.manifest() | {"tokenizer": given},
                    "inputs": [[str(p), p.stat().st_size, content_hash(p)] for p in self.files],
                    "chunks": [[[p.file, p.start, p.end] for p in c.pieces] for c in chunks]}
            plan = json.loads(json.dumps(plan))  # as it reads back from the file
            self._keep_unchanged_steps(plan)
            save_json(self.area.work / "plan.json", plan)
            log.info("%d input files, %.1f MB, in %d chunks", len(self.files), total / 1e6, len(chunks))
        plan = self.comm.bcast(plan, root=0)
        self.chunks = [Chunk(i, tuple(Piece(*p) for p in c)) for i, c in enumerate(plan["chunks"])]
        self.first_keys = np.array([c.first_key for c in self.chunks], np.uint64)
        self.area.start_attempt(self.comm)

    def _keep_unchanged_steps(self, plan: dict[str, Any]) -> None:
        plan_file = self.area.work / "plan.json"
        if not plan_file.is_file():
            self.area.work.mkdir(parents=True, exist_ok=True)
            return
        earlier = json.loads(plan_file.read_text())
        changed = {k for k in plan["settings"] if plan["settings"][k] != earlier["settings"].get(k)}
        if plan["inputs"] != earlier["inputs"] or plan["chunks"] != earlier["chunks"]:
            changed.add("inputs")
        redo = next((i for i, (_, keys) in enumerate(STEPS) if changed & keys), None)
        if redo is None:
            log.info("continuing the build in %s", self.area.root)
            return
        log.info("continuing the build in %s: redoing from its %s step (changed: %s)", self.area.root,
                 STEPS[redo][0][0], ", ".join(sorted(changed)))
        for folders, _ in STEPS[redo:]:
            for name in folders:
                path = self.area.root / name if name == "out" else self.area.work / name
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)

    def _run(self, stage: str, units: Sequence[int], task: Callable[[int], None]) -> None:
        run_units(self.area, self.comm, stage, units, task, self.workers)

    # -- per chunk: read, extract, clean, filter, hash, sign, check contamination -------------

    def map_chunks(self) -> None:
        mapper = ChunkMapper(self.s, self.files, self.area)
        self._run("map", range(len(self.chunks)), lambda unit: mapper.map(self.chunks[unit]))

    # -- per chunk: what becomes of each document ---------------------------------------------

    def decide_documents(self) -> None:
        self._run("decide", range(len(self.chunks)), self._decide_chunk)
        # every chunk's counts are small files: rank 0 reads them, not every rank
        self.counts = self.comm.bcast(self._stage_counts() if self.rank == 0 else None, root=0)
        if not self.counts["split"]["train"]:
            raise ValueError(f"no documents left for training from {len(self.files)} input files; see the "
                             f"counts above (lower --min-chars {self.s.min_chars}?)")

    def _decide_chunk(self, unit: int) -> None:
        docs = np.load(self.area.file("map", unit, "docs.npz"))
        keys = docs["keys"]
        fate = np.full(len(keys), TRAIN, np.uint8)
        if len(keys):
            valid = np.array([_is_valid(d.tobytes().hex(), self.s.valid_fraction, self.s.seed)
                              for d in docs["digests"]], bool)
            fate[valid] = VALID
            contaminated = docs["contamination"] >= 0
            fate[contaminated] = CONTAMINATED + docs["contamination"][contaminated]
            if "quality" in docs:
                fate[~keep(docs["quality"], docs["digests"], self.s.seed, self.s.quality_alpha,
                           self.s.quality_threshold)] = LOW_QUALITY
            fate[np.isin(keys, _within(self.near_duplicates, keys[0], keys[-1]))] = NEAR_DUPLICATE
            for part in range(self.exact_parts):
                dups = np.load(self.area.file("exact", part, "duplicates.npy"), mmap_mode="r")
                fate[np.isin(keys, _within(dups, keys[0], keys[-1]))] = DUPLICATE
        sample = np.array([sample_hash(d.tobytes(), self.s.seed) for d in docs["digests"]], np.uint64)
        np.savez(self.area.file("decide", unit, "fate.npz"), fate=fate, sample=sample)
        self.area.finish("decide", unit, {"fate": np.bincount(fate, minlength=CONTAMINATED
                                                              + len(self.eval_names)).tolist()})

    def _stage_counts(self) -> dict[str, Any]:
        counts = StageCounts()
        skipped, no_text, filtered, truncated = Counter(), Counter(), Counter(), Counter()
        fate = np.zeros(CONTAMINATED + len(self.eval_names), np.int64)
        n_read = 0
        for c in self.chunks:
            record = self.area.record("map", c.id)
            n_read += record["read"]
            skipped.update(record["skipped"])
            truncated.update(record.get("truncated", {}))
            no_text.update(record["no_text"])
            filtered.update(record["filtered"])
            fate += self.area.record("decide", c.id)["fate"]
        counts.record("read", n_read + sum(skipped.values()), n_read, skipped)
        if truncated:  # documents read (and kept) from files that broke off: truncated_file
            counts.stages["read"]["read_from_truncated_files"] = dict(sorted(truncated.items()))
        extracted = n_read - sum(no_text.values())
        counts.record("extract", n_read, extracted, no_text)
        kept = extracted - sum(filtered.values())
        counts.record("filter", extracted, kept, filtered)
        unique = kept - fate[DUPLICATE]
        counts.record("exact_dedup", kept, unique, Counter({"duplicate": int(fate[DUPLICATE])}))
        distinct = unique - fate[NEAR_DUPLICATE]
        counts.record("near_dedup", unique, distinct, Counter({"near_duplicate": int(fate[NEAR_DUPLICATE])}))
        leaks = Counter({f"contaminated:{name}": int(fate[CONTAMINATED + i])
                         for i, name in enumerate(self.eval_names)})
        good = distinct - fate[LOW_QUALITY]
        counts.record("quality", distinct, good, Counter({"low_quality": int(fate[LOW_QUALITY])}))
        counts.record("decontaminate", good, int(fate[TRAIN] + fate[VALID]), leaks)
        counts.stages["split"] = {"in": int(fate[TRAIN] + fate[VALID]), "train": int(fate[TRAIN]),
                                  "valid": int(fate[VALID])}
        log.info("%-12s %8d in %8d train %d valid", "split", *counts.stages["split"].values())
        return counts.stages

    def _texts(self, unit: int) -> Iterator[dict[str, Any]]:
        with zstandard.open(self.area.file("map", unit, "texts.jsonl.zst"), "rt", encoding="utf-8") as f:
            yield from (json.loads(line) for line in f)

    # -- per chunk: tokenize and write shards -------------------------------------------------

    def tokenize(self) -> None:
        self._run("shards", range(len(self.chunks)), self._tokenize_chunk)

    def _tokenize_chunk(self, unit: int) -> None:
        docs = np.load(self.area.file("map", unit, "docs.npz"))
        fate = np.load(self.area.file("decide", unit, "fate.npz"))["fate"]
        tok, dtype = self.tokenizer, token_dtype(self.tokenizer.vocab_size)
        pattern = chunk_shard_pattern(unit)
        cap = self.s.max_shard_tokens
        quality = docs["quality"] if "quality" in docs else None
        with (ShardWriter(self.area.out, tok.vocab_size, cap, pattern) as train,
              ShardWriter(self.area.out / "valid", tok.vocab_size, cap, pattern) as valid):
            for i, (doc, digest, side) in enumerate(zip(self._texts(unit), docs["digests"], fate)):
                if side not in (TRAIN, VALID):
                    continue
                tokens = np.array([*tok.encode(doc["text"]), tok.eos_id], dtype=dtype)
                meta = {"source": doc["source"], "url": doc["url"]}
                if quality is not None:  # the classifier's score, for audits and mixtures later
                    meta["quality"] = round(float(quality[i]), 6)
                (train if side == TRAIN else valid).write(digest.tobytes().hex(), tokens, meta)
        self.area.finish("shards", unit, {"train": train.shards, "valid": valid.shards})

    # -- manifest and publication -------------------------------------------------------------

    def finish(self, output: Path) -> dict[str, Any]:
        """Rank 0 merges the chunks' shard lists and counts into the manifests and publishes."""
        manifest = None
        peaks = self.comm.gather(_peak_memory_mib(), root=0)
        if self.rank == 0:
            log.info("peak memory a rank, MiB (its largest process): %s", " ".join(f"{m:.0f}" for m in peaks))
            records = [self.area.record("shards", c.id) for c in self.chunks]
            out = self.area.out
            out.mkdir(exist_ok=True)
            shutil.copyfile(self.area.work / TOKENIZER_FILE, out / TOKENIZER_FILE)
            manifest = self._write_manifest(out, [s for r in records for s in r["train"]],
                                            {"stages": self.counts, "settings": self.s.manifest(),
                                             "near_dedup": self._near_dedup_manifest()})
            valid = [s for r in records for s in r["valid"]]
            if valid:
                shutil.copyfile(out / TOKENIZER_FILE, out / "valid" / TOKENIZER_FILE)
                held_out = self._write_manifest(out / "valid", valid,
                                                {"stages": {"split": "valid part of ../manifest.json"}})
                manifest["valid"] = {"path": "valid", **{k: held_out[k] for k in ("documents", "tokens")}}
                write_manifest(out, manifest)
            _publish(out, output)
            shutil.rmtree(self.area.root)
        settle(self.comm)
        return self.comm.bcast(manifest, root=0)

    def _near_dedup_manifest(self) -> dict[str, Any]:
        """The LSH bands used, the chance that a pair of each Jaccard similarity was compared (only
        compared pairs can be found: candidates are then verified exactly), and the pairs counted."""
        bands, rows = self.s.lsh_bands()
        return {"threshold": self.s.near_threshold, "num_perm": self.s.num_perm, "bands": bands, "rows": rows,
                "chosen": "given" if self.s.minhash_bands or self.s.minhash_rows else "for the threshold",
                "candidate_probability": recall_curve(bands, rows),
                "verification": "exact Jaccard similarity of the shingle sets, for the candidates whose "
                                f"estimate is at most {LOOSE_SIGMAS:g} standard errors under the threshold",
                "pairs": self.near_pair_counts()}

    def _write_manifest(self, folder: Path, shards: list[dict], extra: dict[str, Any]) -> dict[str, Any]:
        tok = self.tokenizer
        manifest = {
            "format": FORMAT,
            "tokenizer": {"file": TOKENIZER_FILE, "sha256": tok.sha256, "vocab_size": tok.vocab_size,
                          "eos_id": tok.eos_id},
            "dtype": token_dtype(tok.vocab_size).name,
            "documents": sum(s["documents"] for s in shards),
            "tokens": sum(s["tokens"] for s in shards),
            "shards": shards,
            **extra,
        }
        write_manifest(folder, manifest)
        log.info("wrote %s: %d documents, %d tokens, %d shards, %s", folder / MANIFEST_NAME,
                 manifest["documents"], manifest["tokens"], len(shards), manifest["dtype"])
        return manifest


class StageCounts:
    """Documents in, out and dropped by reason, for each stage in order."""

    def __init__(self) -> None:
        self.stages: dict[str, dict[str, Any]] = {}

    def record(self, name: str, n_in: int, n_out: int, dropped: Counter) -> None:
        dropped = Counter({k: int(v) for k, v in dropped.items() if v})
        if n_in != n_out + sum(dropped.values()):
            raise AssertionError(f"stage {name}: {n_in} in != {n_out} out + {dict(dropped)} dropped")
        self.stages[name] = {"in": int(n_in), "out": int(n_out), "dropped": dict(sorted(dropped.items()))}
        log.info("%-12s %8d in %8d out %s", name, n_in, n_out,
                 " ".join(f"{k}={v}" for k, v in sorted(dropped.items())))


def _publish(new: Path, output: Path) -> None:
    """Put the finished corpus at `output`; an earlier one there is removed only after the swap."""
    old = output.with_name(f".{output.name}.replaced")
    if output.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(output, old)
    os.replace(new, output)
    shutil.rmtree(old, ignore_errors=True)


def _peak_memory_mib() -> float:
    usage = (resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return max(u.ru_maxrss for u in usage) / 1024  # kilobytes on Linux


def _is_valid(digest: str, valid_fraction: float, seed: int) -> bool:
    """A document's side depends only on its text and the seed, not on input order or location."""
    h = hashlib.blake2b(f"{seed}:{digest}".encode(), digest_size=8).digest()
    return int.from_bytes(h) / 2**64 < valid_fraction


def _within(sorted_keys: np.ndarray, first: np.uint64, last: np.uint64) -> np.ndarray:
    """The part of a sorted key array from `first` to `last` (a chunk's key range)."""
    start, stop = np.searchsorted(sorted_keys, first), np.searchsorted(sorted_keys, last, side="right")
    return np.asarray(sorted_keys[start:stop])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", nargs="+", required=True, metavar="PATH",
                        help="files or folders of .html(.gz), .txt, .jsonl(.gz/.zst)")
    parser.add_argument("--output", required=True, metavar="OUT", help="shard folder to create")
    BuildSettings.add_arguments(parser)
    parser.add_argument("--workers", type=int, default=None,
                        help="processes a rank (default: all cores; 1 under MPI)")
    parser.add_argument("--force", action="store_true",
                        help="replace a non-empty --output (only once the new corpus is complete)")
    args = parser.parse_args(argv)
    comm = world()
    logging.basicConfig(level=logging.INFO if comm.Get_rank() == 0 else logging.WARNING,
                        format="%(message)s")
    try:
        settings = BuildSettings.from_arguments(args)
        build(args.input, args.output, settings, workers=args.workers, force=args.force, comm=comm)
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError) as err:
        return _fail(comm, str(err))
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        return _fail(comm, _no_space(err, Path(args.output)))
    return 0


def _fail(comm: Any, message: str) -> int:
    print(f"pipelines.build: error: {message}", file=sys.stderr)
    if not isinstance(comm, LocalComm) and comm.Get_size() > 1:
        abort(comm, 2)  # the other ranks may be waiting in a collective: end them all
    return 2


def _no_space(err: OSError, output: Path) -> str:
    where = output.absolute().parent
    free = shutil.disk_usage(where).free if where.is_dir() else 0
    what = f"{err.strerror}: {err.filename}" if err.filename else err.strerror
    return (f"no space left in {where} ({what}): the work area {output}.build and "
            f"the output {output} are written there, {free / 1e6:.1f} MB free now; free space or choose an "
            "--output on a larger disk (the same command continues the build from its work area)")


if __name__ == "__main__":
    sys.exit(main())
