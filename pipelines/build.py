"""Build a training corpus: raw documents -> text -> token shards + manifest, on one or many MPI ranks.

    python -m pipelines.build --input data/sample/html --output data/shards \
        --train-tokenizer --vocab-size 8192 [--decontaminate lambada=data/eval/lambada/...]
    mpiexec -n 4 python -m pipelines.build ...          # same output, the work split over 4 ranks

Stages: read -> extract (HTML to text) -> clean -> filter (length, mostly text, blocked domains)
-> exact dedup -> near dedup (MinHash LSH) -> decontaminate (optional) -> split (train / valid by
a seeded hash of the text) -> tokenizer (trained on a sample of the train split, or given)
-> tokenize -> shards. OUT/ gets the train shards and OUT/valid/ the validation shards, each with
its manifest.json and a copy of the tokenizer. Every stage counts documents in, out and dropped by
reason, and the counts reconcile.

Under MPI, document i (in sorted-file order) is extracted, cleaned, filtered, hashed, signed and
checked for contamination by rank i mod K; rank 0 gathers the digests and signatures and makes
every dedup decision in document order, exactly as one rank would; each rank tokenizes its kept
documents and rank 0 writes the shards in document order. So `-n K` writes byte-identical shards
and manifest to `-n 1`.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import multiprocessing
import os
import shutil
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from megagpt.tokenizer import Tokenizer
from pipelines.clean import clean_text
from pipelines.decontaminate import Decontaminator
from pipelines.dedup import exact_duplicates, near_duplicates
from pipelines.extract import extract_html
from pipelines.filters import DEFAULT_BLOCKED_DOMAINS, FilterConfig, reject_reason
from pipelines.minhash import MinHasher
from pipelines.mpi import LocalComm, settle, world
from pipelines.overlap import parse_named
from pipelines.shards import FORMAT, MANIFEST_NAME, ShardWriter, token_dtype, write_manifest
from pipelines.sources import RawDocument, list_inputs, read_documents

log = logging.getLogger("pipelines.build")
TOKENIZER_FILE = "tokenizer.model"


@dataclass
class Document:
    index: int  # place in the global document order (sorted files, then position in file)
    text: str
    source: str
    url: str | None

    @property
    def digest(self) -> str:
        """Hash of the text up to case and whitespace: the exact-duplicate key and the sample key."""
        normal = " ".join(self.text.lower().split())
        return hashlib.blake2b(normal.encode(), digest_size=16).hexdigest()


@dataclass
class Survivor:
    """What rank 0 needs of a document that passed the filters, to make the corpus-wide decisions."""

    index: int
    digest: str
    signature: np.ndarray | None
    contamination: str | None


class StageCounts:
    """Documents in, out and dropped by reason, for each stage in order."""

    def __init__(self) -> None:
        self.stages: dict[str, dict[str, Any]] = {}

    def record(self, name: str, n_in: int, n_out: int, dropped: Counter) -> None:
        if n_in != n_out + sum(dropped.values()):
            raise AssertionError(f"stage {name}: {n_in} in != {n_out} out + {dict(dropped)} dropped")
        self.stages[name] = {"in": n_in, "out": n_out, "dropped": dict(sorted(dropped.items()))}
        log.info("%-12s %8d in %8d out %s", name, n_in, n_out,
                 " ".join(f"{k}={v}" for k, v in sorted(dropped.items())))

    def record_flags(self, name: str, items: list, flags: list[str | None]) -> list:
        """Keep the items whose flag is None; count the others under their flag."""
        kept = [item for item, flag in zip(items, flags) if flag is None]
        self.record(name, len(items), len(kept), Counter(f for f in flags if f is not None))
        return kept


def build(inputs: Sequence[str | Path], output: str | Path, *, tokenizer: str | Path | None = None,
          vocab_size: int | None = None, valid_fraction: float = 0.05, min_chars: int = 200,
          min_alpha: float = 0.6, blocked_domains: Sequence[str] = DEFAULT_BLOCKED_DOMAINS,
          near_threshold: float = 0.8, num_perm: int = 128, shingle: int = 5,
          decontaminate: Mapping[str, str | Path] | None = None, decontaminate_threshold: float = 0.01,
          tokenizer_sample: int = 100_000, seed: int = 0, force: bool = False,
          max_shard_tokens: int = 50_000_000, workers: int | None = None, comm: Any = None
          ) -> dict[str, Any]:
    """Build the corpus in `output` (and `output/valid`) and return its manifest (on every rank)."""
    comm = comm or world()
    rank, size = comm.Get_rank(), comm.Get_size()
    if (tokenizer is None) == (vocab_size is None):
        raise ValueError("give exactly one of --tokenizer MODEL or --train-tokenizer --vocab-size N")
    if not 0 <= valid_fraction < 1:
        raise ValueError(f"--valid-fraction {valid_fraction} must be in [0, 1)")
    output = Path(output)
    _prepare_output(output, force, comm)
    files = list_inputs(inputs)
    filters = FilterConfig(min_chars, min_alpha, tuple(blocked_domains))
    hasher = MinHasher(num_perm, shingle, seed=seed + 1)
    decontaminator = Decontaminator(decontaminate or {}, decontaminate_threshold)

    # every rank reads the (cheap) raw stream and keeps documents i with i mod size == rank
    skipped: Counter = Counter()
    raw = [r for i, r in enumerate(tqdm(read_documents(files, skipped), desc="read", unit="doc",
                                        leave=False, disable=rank != 0)) if i % size == rank]
    n_read = comm.allreduce(len(raw))
    if workers is None:
        workers = 1 if size > 1 else len(os.sched_getaffinity(0))
    indices = [rank + size * i for i in range(len(raw))]
    docs = _extract_all(raw, indices, workers, rank)

    # per-document work, spread over the ranks: reason to drop, or what the global decisions need
    early: list[tuple[int, str, str]] = []  # (index, stage, reason)
    survivors: list[Survivor] = []
    kept: dict[int, Document] = {}
    for doc in tqdm(docs, desc="clean+filter+sign", unit="doc", leave=False, disable=rank != 0):
        if not doc.text.strip():
            early.append((doc.index, "extract", "no_main_text"))
            continue
        doc.text = clean_text(doc.text)
        reason = reject_reason(doc.text, doc.url, filters)
        if reason is not None:
            early.append((doc.index, "filter", reason))
            continue
        kept[doc.index] = doc
        survivors.append(Survivor(doc.index, doc.digest, hasher.signature(doc.text),
                                  decontaminator.reject_reason(doc.text)))

    # rank 0 decides, in document order, what stays and in which split; everyone learns it
    settle(comm)
    gathered = comm.gather((early, survivors), root=0)
    plan = _decide(gathered, n_read, skipped, valid_fraction, seed, near_threshold,
                   tokenizer_sample) if rank == 0 else None
    plan = comm.bcast(plan, root=0)
    if not plan["train"]:
        raise ValueError(f"no documents left for training from {', '.join(map(str, inputs))}; "
                         f"see the counts above (lower --min-chars {min_chars}?)")

    tok = _tokenizer(output, tokenizer, vocab_size, kept, plan, seed, comm)
    mine = {i: s for i, s in plan["split_of"].items() if i in kept}
    tokenized = []
    for i in tqdm(sorted(mine), desc="tokenize", unit="doc", leave=False, disable=rank != 0):
        doc = kept[i]
        tokens = np.array([*tok.encode(doc.text), tok.eos_id], dtype=token_dtype(tok.vocab_size))
        tokenized.append((i, mine[i], doc.digest, tokens, {"source": doc.source, "url": doc.url}))
    settle(comm)
    everything = comm.gather(tokenized, root=0)
    manifest = None
    if rank == 0:
        ordered = sorted((t for part in everything for t in part), key=lambda t: t[0])
        manifest = _write_splits(output, ordered, tok, max_shard_tokens, plan["stages"], {
            "min_chars": min_chars, "min_alpha": min_alpha, "blocked_domains": list(blocked_domains),
            "near_threshold": near_threshold, "num_perm": num_perm, "shingle": shingle,
            "decontaminate": {k: str(v) for k, v in (decontaminate or {}).items()},
            "decontaminate_threshold": decontaminate_threshold, "valid_fraction": valid_fraction,
            "seed": seed})
    settle(comm)
    return comm.bcast(manifest, root=0)


def _prepare_output(output: Path, force: bool, comm: Any) -> None:
    if output.exists() and any(output.iterdir()) and not force:  # every rank sees the same folder
        raise FileExistsError(f"--output {output} is not empty; pass --force to replace it")
    comm.Barrier()
    if comm.Get_rank() == 0:
        if output.exists():
            shutil.rmtree(output)
        output.mkdir(parents=True)
    comm.Barrier()


def _extract_one(item: tuple[int, RawDocument]) -> Document:
    index, raw = item
    if not raw.is_html:
        return Document(index, raw.content, raw.source, raw.url)
    page = extract_html(raw.content, raw.url)
    return Document(index, page.text, raw.source, page.url)


def _extract_all(raw: list[RawDocument], indices: list[int], workers: int, rank: int) -> list[Document]:
    progress = dict(desc="extract", unit="doc", total=len(raw), leave=False, disable=rank != 0)
    items = list(zip(indices, raw))
    if workers <= 1 or sum(r.is_html for r in raw) < 8:
        return [_extract_one(item) for item in tqdm(items, **progress)]
    # fork shares the already-imported trafilatura; imap keeps input order, so output is deterministic
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return list(tqdm(pool.imap(_extract_one, items, chunksize=4), **progress))


def _decide(gathered: list, n_read: int, skipped: Counter, valid_fraction: float, seed: int,
            near_threshold: float, tokenizer_sample: int) -> dict[str, Any]:
    """The corpus-wide decisions and stage counts, from every rank's per-document results."""
    early = sorted(e for part, _ in gathered for e in part)
    survivors = sorted((s for _, part in gathered for s in part), key=lambda s: s.index)
    counts = StageCounts()
    counts.record("read", n_read + sum(skipped.values()), n_read, skipped)
    no_text = Counter(reason for _, stage, reason in early if stage == "extract")
    counts.record("extract", n_read, n_read - sum(no_text.values()), no_text)
    filtered = Counter(reason for _, stage, reason in early if stage == "filter")
    counts.record("filter", n_read - sum(no_text.values()), len(survivors), filtered)

    dup = exact_duplicates([s.digest for s in survivors])
    unique = counts.record_flags("exact_dedup", survivors, ["duplicate" if d else None for d in dup])
    near = near_duplicates([s.signature for s in unique], near_threshold)
    distinct = counts.record_flags("near_dedup", unique, ["near_duplicate" if d else None for d in near])
    clean = counts.record_flags("decontaminate", distinct, [s.contamination for s in distinct])

    valid = [s.index for s in clean if _is_valid(s.digest, valid_fraction, seed)]
    train = [s.index for s in clean if not _is_valid(s.digest, valid_fraction, seed)]
    counts.stages["split"] = {"in": len(clean), "train": len(train), "valid": len(valid)}
    log.info("%-12s %8d in %8d train %d valid", "split", len(clean), len(train), len(valid))
    step = max(1, math.ceil(len(train) / tokenizer_sample))
    return {"stages": counts.stages, "train": train, "tokenizer_sample": train[::step],
            "split_of": {**{i: "train" for i in train}, **{i: "valid" for i in valid}}}


def _is_valid(digest: str, valid_fraction: float, seed: int) -> bool:
    """A document's side depends only on its text and the seed, not on input order or location."""
    h = hashlib.blake2b(f"{seed}:{digest}".encode(), digest_size=8).digest()
    return int.from_bytes(h) / 2**64 < valid_fraction


def _tokenizer(output: Path, given: str | Path | None, vocab_size: int | None, kept: dict[int, Document],
               plan: dict[str, Any], seed: int, comm: Any) -> Tokenizer:
    """The given tokenizer, or one trained on rank 0 on the sample of train documents from all ranks."""
    tok_path = output / TOKENIZER_FILE
    if comm.Get_rank() == 0:
        if given is None:
            sample = set(plan["tokenizer_sample"])
            parts = comm.gather([(i, kept[i].text) for i in sorted(sample & kept.keys())], root=0)
            texts = [t for _, t in sorted(p for part in parts for p in part)]
            log.info("training a %d-piece BPE tokenizer on %d documents", vocab_size, len(texts))
            Tokenizer.train(texts, tok_path, vocab_size, seed=seed)
        else:
            shutil.copyfile(given, tok_path)
    elif given is None:
        sample = set(plan["tokenizer_sample"])
        comm.gather([(i, kept[i].text) for i in sorted(sample & kept.keys())], root=0)
    settle(comm)  # rank 0 may train for minutes
    return Tokenizer.load(tok_path)


def _write_splits(output: Path, ordered: list[tuple], tok: Tokenizer, max_shard_tokens: int,
                  stages: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    train = [t for t in ordered if t[1] == "train"]
    valid = [t for t in ordered if t[1] == "valid"]
    manifest = _write_split(output, train, tok, max_shard_tokens, {"stages": stages, "settings": settings})
    if valid:
        (output / "valid").mkdir()
        shutil.copyfile(output / TOKENIZER_FILE, output / "valid" / TOKENIZER_FILE)
        held_out = _write_split(output / "valid", valid, tok, max_shard_tokens,
                                {"stages": {"split": "valid part of ../manifest.json"}})
        manifest["valid"] = {"path": "valid", **{k: held_out[k] for k in ("documents", "tokens")}}
        write_manifest(output, manifest)
    return manifest


def _write_split(folder: Path, docs: list[tuple], tok: Tokenizer, max_shard_tokens: int,
                 extra: dict[str, Any]) -> dict[str, Any]:
    with ShardWriter(folder, tok.vocab_size, max_shard_tokens) as writer:
        for _, _, digest, tokens, meta in tqdm(docs, desc=f"shards {folder.name}", unit="doc", leave=False):
            writer.write(digest, tokens, meta)
    manifest = {
        "format": FORMAT,
        "tokenizer": {"file": TOKENIZER_FILE, "sha256": tok.sha256, "vocab_size": tok.vocab_size,
                      "eos_id": tok.eos_id},
        "dtype": token_dtype(tok.vocab_size).name,
        "documents": len(docs),
        "tokens": sum(s["tokens"] for s in writer.shards),
        "shards": writer.shards,
        **extra,
    }
    write_manifest(folder, manifest)
    log.info("wrote %s: %d documents, %d tokens, %d shards, %s", folder / MANIFEST_NAME,
             len(docs), manifest["tokens"], len(writer.shards), manifest["dtype"])
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", nargs="+", required=True, metavar="PATH",
                        help="files or folders of .html(.gz), .txt, .jsonl(.gz/.zst)")
    parser.add_argument("--output", required=True, metavar="OUT", help="shard folder to create")
    tok = parser.add_mutually_exclusive_group(required=True)
    tok.add_argument("--tokenizer", metavar="MODEL", help="an existing sentencepiece model")
    tok.add_argument("--train-tokenizer", action="store_true", help="train a BPE on the train split")
    parser.add_argument("--vocab-size", type=int, default=50257,
                        help="with --train-tokenizer (default 50257)")
    parser.add_argument("--tokenizer-sample", type=int, default=100_000,
                        help="train the tokenizer on at most this many train documents")
    parser.add_argument("--valid-fraction", type=float, default=0.05)
    parser.add_argument("--min-chars", type=int, default=200, help="drop documents shorter than this")
    parser.add_argument("--min-alpha", type=float, default=0.6,
                        help="drop documents whose non-space characters are less than this share letters")
    parser.add_argument("--block-domain", nargs="*", default=list(DEFAULT_BLOCKED_DOMAINS), metavar="DOMAIN",
                        help="drop documents from these domains and their subdomains (default wikipedia.org)")
    parser.add_argument("--near-threshold", type=float, default=0.8,
                        help="MinHash Jaccard similarity that makes a near duplicate")
    parser.add_argument("--num-perm", type=int, default=128, help="MinHash permutations")
    parser.add_argument("--shingle", type=int, default=5, help="words a MinHash shingle")
    parser.add_argument("--decontaminate", nargs="+", default=[], metavar="NAME=PATH",
                        help="drop training documents sharing 8-grams with these eval sets")
    parser.add_argument("--decontaminate-threshold", type=float, default=0.01,
                        help="drop when more than this share of a document's 8-grams is in an eval set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-shard-tokens", type=int, default=50_000_000)
    parser.add_argument("--workers", type=int, default=None,
                        help="extraction processes a rank (default: all cores; 1 under MPI)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --output")
    args = parser.parse_args(argv)
    comm = world()
    logging.basicConfig(level=logging.INFO if comm.Get_rank() == 0 else logging.WARNING,
                        format="%(message)s")
    try:
        build(args.input, args.output, tokenizer=args.tokenizer,
              vocab_size=args.vocab_size if args.train_tokenizer else None,
              valid_fraction=args.valid_fraction, min_chars=args.min_chars, min_alpha=args.min_alpha,
              blocked_domains=args.block_domain, near_threshold=args.near_threshold,
              num_perm=args.num_perm, shingle=args.shingle,
              decontaminate=parse_named(args.decontaminate, "--decontaminate"),
              decontaminate_threshold=args.decontaminate_threshold,
              tokenizer_sample=args.tokenizer_sample, seed=args.seed, force=args.force,
              max_shard_tokens=args.max_shard_tokens, workers=args.workers, comm=comm)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"pipelines.build: error: {err}", file=sys.stderr)
        if not isinstance(comm, LocalComm) and comm.Get_size() > 1:
            comm.Abort(2)  # the other ranks may be waiting in a collective: end them all
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
