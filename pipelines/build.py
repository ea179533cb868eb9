"""Build a training corpus: raw documents -> text -> token shards + manifest.

    python -m pipelines.build --input data/sample/html --output data/shards \
        --train-tokenizer --vocab-size 8192

Stages: read -> extract (HTML to text) -> clean -> filter (length) -> exact dedup -> split
(train / valid by a seeded hash of the text) -> tokenizer (trained on the train split, or given)
-> tokenize -> shards. OUT/ gets the train shards and OUT/valid/ the validation shards, each
with its manifest.json and a copy of the tokenizer. Every stage counts documents in, out and
dropped by reason, and the counts reconcile. The same inputs and seed give byte-identical output.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import multiprocessing
import os
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from megagpt.tokenizer import Tokenizer
from pipelines.clean import clean_text
from pipelines.extract import extract_html
from pipelines.shards import FORMAT, MANIFEST_NAME, ShardWriter, token_dtype, write_manifest
from pipelines.sources import RawDocument, list_inputs, read_documents

log = logging.getLogger("pipelines.build")
TOKENIZER_FILE = "tokenizer.model"


@dataclass
class Document:
    text: str
    source: str
    url: str | None

    @property
    def digest(self) -> str:
        """Hash of the text up to case and whitespace: the exact-duplicate key and the sample key."""
        normal = " ".join(self.text.lower().split())
        return hashlib.blake2b(normal.encode(), digest_size=16).hexdigest()


class StageCounts:
    """Documents in, out and dropped by reason, for each stage in order."""

    def __init__(self) -> None:
        self.stages: dict[str, dict[str, Any]] = {}

    def record(self, name: str, n_in: int, n_out: int, dropped: Counter) -> None:
        if n_in != n_out + sum(dropped.values()):
            raise AssertionError(f"stage {name}: {n_in} in != {n_out} out + {dict(dropped)} dropped")
        self.stages[name] = {"in": n_in, "out": n_out, "dropped": dict(sorted(dropped.items()))}
        log.info("%-8s %8d in %8d out %s", name, n_in, n_out,
                 " ".join(f"{k}={v}" for k, v in sorted(dropped.items())))


def build(inputs: Sequence[str | Path], output: str | Path, *, tokenizer: str | Path | None = None,
          vocab_size: int | None = None, valid_fraction: float = 0.05, min_chars: int = 200,
          seed: int = 0, force: bool = False, max_shard_tokens: int = 50_000_000,
          workers: int | None = None) -> dict[str, Any]:
    """Build the corpus in `output` (and `output/valid`) and return its manifest."""
    if (tokenizer is None) == (vocab_size is None):
        raise ValueError("give exactly one of --tokenizer MODEL or --train-tokenizer --vocab-size N")
    if not 0 <= valid_fraction < 1:
        raise ValueError(f"--valid-fraction {valid_fraction} must be in [0, 1)")
    output = Path(output)
    _prepare_output(output, force)
    files = list_inputs(inputs)
    counts = StageCounts()

    skipped: Counter = Counter()
    raw = list(tqdm(read_documents(files, skipped), desc="read", unit="doc", leave=False))
    counts.record("read", len(raw) + sum(skipped.values()), len(raw), skipped)

    texts = _extract_all(raw, workers)
    docs, dropped = _keep(texts, lambda d: None if d.text.strip() else "no_main_text")
    counts.record("extract", len(raw), len(docs), dropped)

    cleaned = [Document(clean_text(d.text), d.source, d.url) for d in tqdm(docs, desc="clean", leave=False)]
    docs, dropped = _keep(cleaned, lambda d: "too_short" if len(d.text) < min_chars else None)
    counts.record("filter", len(cleaned), len(docs), dropped)

    seen: set[str] = set()
    unique, dropped = _keep(docs, lambda d: "duplicate" if d.digest in seen or seen.add(d.digest) else None)
    counts.record("dedup", len(docs), len(unique), dropped)

    train, valid = _split(unique, valid_fraction, seed)
    counts.stages["split"] = {"in": len(unique), "train": len(train), "valid": len(valid)}
    log.info("split    %8d in %8d train %d valid", len(unique), len(train), len(valid))
    if not train:
        raise ValueError(f"no documents left for training from {', '.join(map(str, inputs))}; "
                         f"see the counts above (lower --min-chars {min_chars}?)")

    tok_path = output / TOKENIZER_FILE
    if tokenizer is None:
        log.info("training a %d-piece BPE tokenizer on %d documents", vocab_size, len(train))
        tok = Tokenizer.train((d.text for d in train), tok_path, vocab_size, seed=seed)
    else:
        shutil.copyfile(tokenizer, tok_path)
        tok = Tokenizer.load(tok_path)

    manifest = _write_split(output, train, tok, max_shard_tokens, counts.stages)
    if valid:
        (output / "valid").mkdir()
        shutil.copyfile(tok_path, output / "valid" / TOKENIZER_FILE)
        held_out = _write_split(output / "valid", valid, tok, max_shard_tokens,
                                {"split": "valid part of ../manifest.json"})
        manifest["valid"] = {"path": "valid", **{k: held_out[k] for k in ("documents", "tokens")}}
        write_manifest(output, manifest)
    return manifest


def _prepare_output(output: Path, force: bool) -> None:
    if output.exists() and any(output.iterdir()):
        if not force:
            raise FileExistsError(f"--output {output} is not empty; pass --force to replace it")
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)


def _extract_one(raw: RawDocument) -> Document:
    if not raw.is_html:
        return Document(raw.content, raw.source, raw.url)
    page = extract_html(raw.content, raw.url)
    return Document(page.text, raw.source, page.url)


def _extract_all(raw: list[RawDocument], workers: int | None) -> list[Document]:
    workers = workers or len(os.sched_getaffinity(0))
    progress = dict(desc="extract", unit="doc", total=len(raw), leave=False)
    if workers <= 1 or sum(r.is_html for r in raw) < 8:
        return [_extract_one(r) for r in tqdm(raw, **progress)]
    # fork shares the already-imported trafilatura; imap keeps input order, so output is deterministic
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return list(tqdm(pool.imap(_extract_one, raw, chunksize=4), **progress))


def _keep(docs: Iterable[Document], reject: Callable[[Document], str | None]
          ) -> tuple[list[Document], Counter]:
    kept, dropped = [], Counter()
    for doc in docs:
        reason = reject(doc)
        if reason is None:
            kept.append(doc)
        else:
            dropped[reason] += 1
    return kept, dropped


def _split(docs: list[Document], valid_fraction: float, seed: int) -> tuple[list[Document], list[Document]]:
    """A document's side depends only on its text and the seed, not on input order or location."""
    def is_valid(doc: Document) -> bool:
        h = hashlib.blake2b(f"{seed}:{doc.digest}".encode(), digest_size=8).digest()
        return int.from_bytes(h) / 2**64 < valid_fraction

    valid = [d for d in docs if is_valid(d)]
    return [d for d in docs if not is_valid(d)], valid


def _write_split(folder: Path, docs: list[Document], tok: Tokenizer, max_shard_tokens: int,
                 stages: dict[str, Any]) -> dict[str, Any]:
    with ShardWriter(folder, tok.vocab_size, max_shard_tokens) as writer:
        for doc in tqdm(docs, desc=f"tokenize {folder.name}", unit="doc", leave=False):
            tokens = np.array([*tok.encode(doc.text), tok.eos_id], dtype=token_dtype(tok.vocab_size))
            writer.write(doc.digest, tokens, {"source": doc.source, "url": doc.url})
    manifest = {
        "format": FORMAT,
        "tokenizer": {"file": TOKENIZER_FILE, "sha256": tok.sha256, "vocab_size": tok.vocab_size,
                      "eos_id": tok.eos_id},
        "dtype": token_dtype(tok.vocab_size).name,
        "documents": len(docs),
        "tokens": sum(s["tokens"] for s in writer.shards),
        "shards": writer.shards,
        "stages": stages,
    }
    write_manifest(folder, manifest)
    log.info("wrote %s: %d documents, %d tokens, %d shards, %s", folder / MANIFEST_NAME,
             len(docs), manifest["tokens"], len(writer.shards), manifest["dtype"])
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", nargs="+", required=True, metavar="PATH",
                        help="files or folders of .html(.gz), .txt, .jsonl(.gz)")
    parser.add_argument("--output", required=True, metavar="OUT", help="shard folder to create")
    tok = parser.add_mutually_exclusive_group(required=True)
    tok.add_argument("--tokenizer", metavar="MODEL", help="an existing sentencepiece model")
    tok.add_argument("--train-tokenizer", action="store_true", help="train a BPE on the train split")
    parser.add_argument("--vocab-size", type=int, default=50257,
                        help="with --train-tokenizer (default 50257)")
    parser.add_argument("--valid-fraction", type=float, default=0.05)
    parser.add_argument("--min-chars", type=int, default=200, help="drop documents shorter than this")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-shard-tokens", type=int, default=50_000_000)
    parser.add_argument("--workers", type=int, default=None, help="extraction processes (default: all cores)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --output")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        build(args.input, args.output, tokenizer=args.tokenizer,
              vocab_size=args.vocab_size if args.train_tokenizer else None,
              valid_fraction=args.valid_fraction, min_chars=args.min_chars, seed=args.seed,
              force=args.force, max_shard_tokens=args.max_shard_tokens, workers=args.workers)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"pipelines.build: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
