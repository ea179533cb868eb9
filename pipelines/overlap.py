"""Train/test n-gram overlap with a Bloom filter, as in GPT-2 section 4 (Table 6).

    python -m pipelines.overlap --train data/shards --eval lambada=data/eval/lambada/lambada_test.jsonl \
        wikitext2=data/eval/wikitext-2-raw/wiki.test.raw [--ngram 8] [--fp 1e-8] [--json OUT.json] \
        [--save-filter F] [--max-memory 2G]
    python -m pipelines.overlap --filter F --eval NAME=PATH ...     # reuse a saved filter
    mpiexec -n 4 python -m pipelines.overlap ...        # documents split over the ranks

A PATH is a text file (any other name: one document), a .jsonl(.gz/.zst) file (one document a line, field
`text`), a folder of those, or a shard folder written by pipelines.build (decoded with its
tokenizer; each shard checked against the sha256 and document count its manifest lists, so a
truncated or altered shard is refused by name rather than giving a smaller filter). All 8-grams
of the training documents go into a Bloom filter sized for their
distinct count and the target false-positive rate; for each eval set we report how many of its
8-gram occurrences the filter holds, overall and per document.

Memory per rank is a batch of documents plus the filter (pipelines.sources streams JSON lines
files): the distinct count is estimated in a
first pass over the documents (a HyperLogLog sketch, pipelines/cardinality.py, merged over the
ranks), and a second pass inserts batch by batch; no rank holds the hashes of its share. Each rank
holds the whole filter (OR-merged at the end) unless it is larger than `--max-memory` bytes
(suffix K, M or G, powers of 1024): then rank r holds part r of it, inserts and queries travel to
the part's owner by all-to-all (pipelines/partitioned.py), and a filter that does not fit even
split over the ranks is refused with the number of ranks it needs.

`--save-filter F` keeps the filter, with a checksum of its bits (a partitioned one as F.part0ofP
... F.part<P-1>ofP, each rank writing its own); `--filter F` reuses it instead of `--train`, on one
process or on any number of ranks (each maps the parts it owns).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tqdm import tqdm

from megagpt.formats.shards import MANIFEST_NAME, ShardError, read_manifest, read_shard
from pipelines.bloom import BLOCK_BITS, BloomFilter, shape_for
from pipelines.cardinality import HyperLogLog
from pipelines.mpi import LocalComm, abort, settle, world
from pipelines.ngrams import ngram_hashes_batch
from pipelines.partitioned import PartitionedBloom, part_path, ranks_needed, saved_parts
from pipelines.sources import SUFFIXES, list_inputs, parse_named, read_bytes, read_documents

log = logging.getLogger("pipelines.overlap")
_DOCS_A_BATCH = 1024  # documents hashed together: numpy overhead is paid once a batch
_ESTIMATE_SIGMAS = 3.0  # the filter is sized for the distinct-count estimate plus this many errors
_BYTE_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
T = TypeVar("T")


def iter_texts(path: str | Path, rank: int = 0, size: int = 1) -> Iterator[str]:
    """The documents of a text file, jsonl file, folder of them, or shard folder, in a fixed order;
    with `size` > 1 only documents i with i mod size == rank (shards decode only those)."""
    path = Path(path)
    if (path / MANIFEST_NAME).is_file():
        yield from _shard_texts(path, rank, size)
        return
    if path.is_file() and not path.name.endswith(SUFFIXES):  # e.g. WikiText's wiki.test.raw
        if rank == 0:
            yield read_bytes(path).decode("utf-8", errors="replace")
        return
    skipped: Counter = Counter()
    for i, doc in enumerate(read_documents(list_inputs([path]), skipped)):
        if doc.is_html:
            raise ValueError(f"{doc.source} is HTML; build a corpus from it first "
                             "(python -m pipelines.build) and pass the shard folder")
        if i % size == rank:
            yield doc.content
    if skipped:
        raise ValueError(f"{path}: unreadable input {dict(skipped)}; fix or remove those lines/files")


def _shard_texts(folder: Path, rank: int, size: int) -> Iterator[str]:
    from megagpt.formats.tokenizer import Tokenizer

    manifest = read_manifest(folder)
    tok = Tokenizer.load(folder / manifest["tokenizer"]["file"])
    if tok.sha256 != manifest["tokenizer"]["sha256"]:
        raise ShardError(f"{tok.path} does not match the sha256 in {folder / MANIFEST_NAME}; "
                         f"rebuild {folder}")
    unchecked = [s["name"] for s in manifest["shards"] if "sha256" not in s]
    if unchecked and rank == 0:
        log.warning("%s lists no sha256 for %d shard(s) (built before shards had checksums): they are "
                    "read unchecked; rebuild the folder to have them checked", folder / MANIFEST_NAME,
                    len(unchecked))
    index = 0
    for shard in manifest["shards"]:
        documents = 0  # a truncated or altered shard is refused, never a smaller filter
        for _, tokens, _ in read_shard(folder / shard["name"], shard.get("sha256")):
            if index % size == rank:
                yield tok.decode(tokens[tokens != tok.eos_id])
            index, documents = index + 1, documents + 1
        if documents != shard["documents"]:
            raise ShardError(f"{folder / shard['name']} holds {documents} documents, "
                             f"{folder / MANIFEST_NAME} says {shard['documents']}; rebuild {folder}")


def build_filter(paths: Sequence[str | Path], n: int = 8, fp: float = 1e-8, comm: Any = None,
                 max_memory: int | None = None) -> BloomFilter | PartitionedBloom:
    """A Bloom filter of every n-gram of the documents in `paths`, in memory bounded by a batch
    of documents plus the filter (or, partitioned, its part).

    Two passes over the documents. The first estimates their distinct n-grams with a HyperLogLog
    sketch, merged over the ranks; the filter is sized for the estimate raised by three standard
    errors (+1.2%), so it holds the fp target unless the estimate is that far off (about 1 in
    700; then the rate moves by a few percent of itself). The second inserts each batch of hashes.
    Under MPI rank r hashes every size-th document from r. A filter of at most `max_memory` bytes
    (or any size when None) is held whole by every rank, merged by OR; a larger one is split
    over the ranks (pipelines/partitioned.py) and inserts travel to its parts' owners.
    """
    comm = comm or world()
    meta: dict[str, Any] = {"ngram": n, "train": [str(p) for p in paths]}
    sketch = HyperLogLog()
    for hashes in _ngram_batches(paths, n, comm, "count"):
        sketch.add(hashes)
    settle(comm)
    sketch.allreduce(comm)
    distinct = sketch.upper_bound(_ESTIMATE_SIGMAS)
    meta |= {"distinct_estimate": round(sketch.estimate()), "estimate_rse": sketch.relative_std_error}
    bloom = _empty_filter(distinct, fp, comm, max_memory, meta)
    partitioned = isinstance(bloom, PartitionedBloom)
    batches = _ngram_batches(paths, n, comm, "insert")
    for hashes in _in_lockstep(batches, comm, np.empty(0, np.uint64)) if partitioned else batches:
        bloom.add(hashes)
    if not partitioned:
        settle(comm)
        bloom.allreduce(comm)
    parts = f", in {bloom.n_parts} parts of {bloom.part_bytes} bytes" if partitioned else ""
    if comm.Get_rank() == 0:
        log.info("Bloom filter: about %d distinct n-grams (sized for %d), %d bits (%.1f a n-gram), k=%d x %d "
                 "blocks%s", meta["distinct_estimate"], distinct, bloom.n_bits,
                 bloom.n_bits / max(1, distinct), bloom.k, bloom.g, parts)
    return bloom


def _empty_filter(distinct: int, fp: float, comm: Any, max_memory: int | None,
                  meta: dict[str, Any]) -> BloomFilter | PartitionedBloom:
    """A whole filter when it fits `max_memory`, else one part a rank; refused when a part does not fit."""
    n_blocks, k, g = shape_for(distinct, fp)
    meta = {"expected_items": distinct, "fp": fp, **meta}
    nbytes = n_blocks * BLOCK_BITS // 8
    if max_memory is None or nbytes <= max_memory:
        return BloomFilter(n_blocks, k, g, meta)
    needed, ranks = ranks_needed(n_blocks, max_memory), comm.Get_size()
    if needed > ranks:
        raise ValueError(f"--max-memory {max_memory} bytes: the Bloom filter of about {distinct} distinct "
                         f"n-grams at --fp {fp} takes {nbytes} bytes, more than {ranks} rank(s) can hold; "
                         f"run at least {needed} ranks (mpiexec -n {needed} python -m pipelines.overlap "
                         "...), raise --max-memory, or raise --fp")
    return PartitionedBloom.create(n_blocks, k, g, meta, comm)


def _ngram_batches(paths: Sequence[str | Path], n: int, comm: Any, desc: str) -> Iterator[np.ndarray]:
    """The n-gram hashes of this rank's documents of `paths`, a batch of documents at a time."""
    rank, size = comm.Get_rank(), comm.Get_size()
    for path in paths:
        texts = tqdm(iter_texts(path, rank, size), desc=f"{desc} {Path(path).name}", unit="doc",
                     leave=False, disable=rank != 0)
        for batch in _batches(texts, _DOCS_A_BATCH):
            yield ngram_hashes_batch(batch, n)[0]


def _in_lockstep(batches: Iterable[T], comm: Any, empty: T) -> Iterator[T]:
    """Each batch, then `empty` until every rank is out of batches: each rank makes the same number
    of collective calls (a partitioned filter's add and contains) whatever its share."""
    iterator = iter(batches)
    while True:
        batch = next(iterator, None)
        settle(comm)  # a rank ahead sleeps instead of spinning in MPI's poll
        if not comm.allreduce(int(batch is not None)):
            return
        yield empty if batch is None else batch


def load_filter(path: str | Path, n: int, comm: Any = None) -> BloomFilter | PartitionedBloom:
    """A filter saved by --save-filter: one file, or parts F.part0ofP ... (each rank maps its own)."""
    comm = comm or world()
    bloom = BloomFilter.load(path) if Path(path).is_file() else PartitionedBloom.load(path, comm)
    if bloom.meta.get("ngram") != n:
        raise ValueError(f"--filter {path} holds {bloom.meta.get('ngram')}-grams, not --ngram {n}")
    return bloom


def save_filter(bloom: BloomFilter | PartitionedBloom, path: str | Path, comm: Any) -> None:
    """Rank 0 saves a whole filter, each rank its parts of a partitioned one; files of an earlier
    save under the same name that this one would not overwrite are removed first, so that
    --filter finds exactly this filter."""
    partitioned = isinstance(bloom, PartitionedBloom)
    keep = {part_path(path, i, bloom.n_parts) for i in range(bloom.n_parts)} if partitioned else {Path(path)}
    if comm.Get_rank() == 0:
        for stale in [Path(path), *itertools.chain(*saved_parts(path).values())]:
            if stale not in keep:
                stale.unlink(missing_ok=True)
    settle(comm)
    comm.Barrier()
    if partitioned or comm.Get_rank() == 0:
        bloom.save(path)


def overlap(bloom: BloomFilter | PartitionedBloom, texts: Iterable[str], n: int = 8,
            comm: Any = None) -> dict[str, Any] | None:
    """Share of the n-gram occurrences of `texts` found in `bloom`, overall and per document.

    Under MPI (`comm` of several ranks) each rank passes its share of the documents, those i with
    i % size == rank as iter_texts(path, rank, size) gives, and rank 0 gets the report of them all
    (the others None): the per-document counts are put back in document order, so the figures are
    those of one process.
    """
    comm = comm or (bloom.comm if isinstance(bloom, PartitionedBloom) else LocalComm())
    found, counts = _found_per_document(bloom, texts, n, comm)
    shares = comm.gather((found, counts))
    return _report(*_in_document_order(shares)) if comm.Get_rank() == 0 else None


def _found_per_document(bloom: BloomFilter | PartitionedBloom, texts: Iterable[str], n: int,
                        comm: Any) -> tuple[np.ndarray, np.ndarray]:
    """For each document, how many of its n-grams the filter holds, and how many it has."""
    batches: Iterable = (ngram_hashes_batch(batch, n) for batch in _batches(texts, _DOCS_A_BATCH))
    if isinstance(bloom, PartitionedBloom):
        batches = _in_lockstep(batches, comm, (np.empty(0, np.uint64), np.empty(0, np.int64)))
    found, counts = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for hashes, doc_counts in batches:
        hits = bloom.contains(hashes)
        doc = np.repeat(np.arange(len(doc_counts)), doc_counts)
        found.append(np.bincount(doc, weights=hits, minlength=len(doc_counts)).astype(np.int64))
        counts.append(doc_counts)
    return np.concatenate(found), np.concatenate(counts)


def _in_document_order(shares: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Interleave the ranks' per-document arrays: rank r held documents r, r + size, ..."""
    size, total = len(shares), sum(len(found) for found, _ in shares)
    found, counts = np.empty(total, np.int64), np.empty(total, np.int64)
    for rank, (rank_found, rank_counts) in enumerate(shares):
        found[rank::size], counts[rank::size] = rank_found, rank_counts
    return found, counts


def _report(found: np.ndarray, counts: np.ndarray) -> dict[str, Any]:
    docs = found[counts > 0] / counts[counts > 0]  # documents with an n-gram
    total = int(counts.sum())
    return {
        "ngrams": total,
        "found": int(found.sum()),
        "overlap": int(found.sum()) / total if total else 0.0,
        "documents": len(docs),
        "per_document": {
            "mean": float(docs.mean()) if len(docs) else 0.0,
            "median": float(np.median(docs)) if len(docs) else 0.0,
            "p90": float(np.quantile(docs, 0.9)) if len(docs) else 0.0,
            "max": float(docs.max()) if len(docs) else 0.0,
            "any": float((docs > 0).mean()) if len(docs) else 0.0,  # share of documents with a hit
        },
    }


def _batches(items: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def format_table(report: dict[str, dict[str, Any]], n: int) -> str:
    head = (f"{'eval set':<14} {f'{n}-grams':>10} {'in train':>9} {'docs':>6} "
            f"{'doc mean':>9} {'doc p90':>8} {'doc max':>8} {'docs hit':>9}")
    rows = [head, "-" * len(head)]
    for name, r in report.items():
        d = r["per_document"]
        rows.append(f"{name:<14} {r['ngrams']:>10} {100 * r['overlap']:>8.3f}% {r['documents']:>6} "
                    f"{100 * d['mean']:>8.2f}% {100 * d['p90']:>7.2f}% {100 * d['max']:>7.2f}% "
                    f"{100 * d['any']:>8.1f}%")
    return "\n".join(rows)


def parse_bytes(value: str, option: str) -> int:
    """A byte count with an optional K/M/G suffix (powers of 1024); the error names the option."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)i?B?\s*", value, re.IGNORECASE)
    if not match or float(match[1]) <= 0:
        raise ValueError(f"{option} {value!r}: expected a number of bytes with an optional K, M or G suffix, "
                         "e.g. 2G")
    return int(float(match[1]) * _BYTE_SUFFIXES[match[2].upper()])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.overlap", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--train", nargs="+", metavar="PATH", help="training documents or shard folders")
    source.add_argument("--filter", metavar="F", help="a filter saved with --save-filter")
    parser.add_argument("--eval", nargs="+", required=True, metavar="NAME=PATH", help="eval sets")
    parser.add_argument("--ngram", type=int, default=8, help="words an n-gram (default 8, as GPT-2)")
    parser.add_argument("--fp", type=float, default=1e-8, help="Bloom false-positive target (default 1e-8)")
    parser.add_argument("--json", metavar="OUT", help="write {NAME: {ngrams, overlap, ...}} here")
    parser.add_argument("--save-filter", metavar="F", help="save the training filter for --filter")
    parser.add_argument("--max-memory", metavar="BYTES",
                        help="most bytes of filter a rank holds, e.g. 2G; a larger filter is split over "
                             "the ranks (default: every rank holds the whole filter)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    comm = world()
    rank, size = comm.Get_rank(), comm.Get_size()
    try:
        evals = parse_named(args.eval, "--eval")
        max_memory = parse_bytes(args.max_memory, "--max-memory") if args.max_memory else None
        if args.filter and max_memory:
            raise ValueError(f"--max-memory sizes a filter built from --train; --filter {args.filter} is "
                             "mapped as it was saved (a partitioned one: each rank maps its parts)")
        if args.filter:
            bloom = load_filter(args.filter, args.ngram, comm)
        else:
            bloom = build_filter(args.train, args.ngram, args.fp, comm, max_memory)
        if args.save_filter:
            save_filter(bloom, args.save_filter, comm)
            if rank == 0:
                log.info("saved the filter to %s", args.save_filter)
        report = {name: overlap(bloom, iter_texts(path, rank, size), args.ngram, comm)
                  for name, path in evals.items()}
    except (ValueError, FileNotFoundError) as err:
        print(f"pipelines.overlap: error: {err}", file=sys.stderr)
        if size > 1:  # the other ranks may be waiting in a collective: end them, never hang
            abort(comm, 2)
        return 2
    if rank != 0:
        return 0
    print(format_table(report, args.ngram))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
