"""Train/test n-gram overlap with a Bloom filter, as in GPT-2 section 4 (Table 6).

    python -m pipelines.overlap --train data/shards --eval lambada=data/eval/lambada/lambada_test.jsonl \
        wikitext2=data/eval/wikitext-2-raw/wiki.test.raw [--ngram 8] [--fp 1e-8] [--json OUT.json]
    mpiexec -n 4 python -m pipelines.overlap ...        # training documents split over the ranks

A PATH is a text file (any other name: one document), a .jsonl(.gz/.zst) file (one document a line, field
`text`), a folder of those, or a shard folder written by pipelines.build (decoded with its
tokenizer). All 8-grams of the training documents go into a Bloom filter sized for their
distinct count and the target false-positive rate; for each eval set we report how many of its
8-gram occurrences the filter holds, overall and per document. `--save-filter F` keeps the
filter; `--filter F` reuses it instead of `--train`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pipelines.bloom import BloomFilter
from pipelines.mpi import settle, world
from pipelines.ngrams import ngram_hashes_batch
from pipelines.shards import MANIFEST_NAME, ShardError, read_manifest, read_shard
from pipelines.sources import SUFFIXES, list_inputs, read_bytes, read_documents

log = logging.getLogger("pipelines.overlap")
_DOCS_A_BATCH = 1024  # documents hashed together: numpy overhead is paid once a batch


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
    from megagpt.tokenizer import Tokenizer

    manifest = read_manifest(folder)
    tok = Tokenizer.load(folder / manifest["tokenizer"]["file"])
    if tok.sha256 != manifest["tokenizer"]["sha256"]:
        raise ShardError(f"{tok.path} does not match the sha256 in {folder / MANIFEST_NAME}; "
                         f"rebuild {folder}")
    index = 0
    for shard in manifest["shards"]:
        for _, tokens, _ in read_shard(folder / shard["name"]):
            if index % size == rank:
                yield tok.decode(tokens[tokens != tok.eos_id])
            index += 1


def build_filter(paths: Sequence[str | Path], n: int = 8, fp: float = 1e-8, comm: Any = None) -> BloomFilter:
    """A Bloom filter of every n-gram of the documents in `paths`.

    Under MPI rank r hashes every size-th document from r; all ranks size one filter for the sum
    of their distinct counts (an upper bound of the global one, so the fp target holds) and OR
    them together, so each rank ends with the filter of the whole training set. A rank holds its
    distinct hashes (8 bytes an 8-gram) before sizing: for a corpus beyond memory, run more ranks.
    """
    comm = comm or world()
    rank, size = comm.Get_rank(), comm.Get_size()
    chunks = []
    for path in paths:
        texts = tqdm(iter_texts(path, rank, size), desc=f"hash {Path(path).name}", unit="doc",
                     leave=False, disable=rank != 0)
        for batch in _batches(texts, _DOCS_A_BATCH):
            chunks.append(np.unique(ngram_hashes_batch(batch, n)[0]))
    local = np.unique(np.concatenate(chunks)) if chunks else np.empty(0, np.uint64)
    settle(comm)
    distinct_bound = comm.allreduce(len(local))
    bloom = BloomFilter.for_items(distinct_bound, fp, ngram=n, train=[str(p) for p in paths])
    bloom.add(local)
    bloom.allreduce(comm)
    log.info("Bloom filter: %d n-grams (<= this many distinct), %d bits (%.1f a n-gram), k=%d x %d blocks",
             distinct_bound, bloom.n_bits, bloom.n_bits / max(1, distinct_bound), bloom.k, bloom.g)
    return bloom


def overlap(bloom: BloomFilter, texts: Iterable[str], n: int = 8) -> dict[str, Any]:
    """Share of the n-gram occurrences of `texts` found in `bloom`, overall and per document."""
    found = total = 0
    per_doc = []
    for batch in _batches(texts, _DOCS_A_BATCH):
        hashes, counts = ngram_hashes_batch(batch, n)
        hits = bloom.contains(hashes)
        doc_hits = np.bincount(np.repeat(np.arange(len(batch)), counts), weights=hits, minlength=len(batch))
        found, total = found + int(hits.sum()), total + len(hashes)
        per_doc.extend(doc_hits[counts > 0] / counts[counts > 0])  # documents with an n-gram
    docs = np.array(per_doc)
    return {
        "ngrams": total,
        "found": found,
        "overlap": found / total if total else 0.0,
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


def parse_named(items: Sequence[str], option: str) -> dict[str, Path]:
    """NAME=PATH pairs; the error names the option and the expected form."""
    named: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"{option} {item!r}: expected NAME=PATH, e.g. lambada=data/eval/lambada")
        if not Path(path).exists():
            raise FileNotFoundError(f"{option} {item}: {path} does not exist")
        named[name] = Path(path)
    return named


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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    comm = world()
    try:
        evals = parse_named(args.eval, "--eval")
        if args.filter:
            bloom = BloomFilter.load(args.filter)
            if bloom.meta.get("ngram") != args.ngram:
                raise ValueError(f"--filter {args.filter} holds {bloom.meta.get('ngram')}-grams, "
                                 f"not --ngram {args.ngram}")
        else:
            bloom = build_filter(args.train, args.ngram, args.fp, comm)
        if comm.Get_rank() != 0:
            return 0
        if args.save_filter:
            bloom.save(args.save_filter)
            log.info("saved the filter to %s", args.save_filter)
        report = {name: overlap(bloom, iter_texts(path), args.ngram) for name, path in evals.items()}
    except (ValueError, FileNotFoundError) as err:
        print(f"pipelines.overlap: error: {err}", file=sys.stderr)
        return 2
    print(format_table(report, args.ngram))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
