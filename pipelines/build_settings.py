"""What decides a corpus build's output: its settings, their command-line options, and which
steps of a build depend on which of them (a continued build redoes the steps whose settings changed).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from megagpt.formats.tokenizer import Tokenizer
from pipelines.dedup import check_bands, lsh_bands
from pipelines.extract import EXTRACTORS
from pipelines.filters import DEFAULT_BLOCKED_DOMAINS
from pipelines.quality_model import QualityModel, file_sha256
from pipelines.sources import parse_named

TOKENIZER_FILE = "tokenizer.model"
MIB = 1 << 20
# what the decide step makes of a document that passed the filters, one byte a document
TRAIN, VALID, DUPLICATE, NEAR_DUPLICATE, LOW_QUALITY, CONTAMINATED = range(6)  # CONTAMINATED + i: eval set i


def _option(default: Any, help_text: str, kind: type | None = None) -> Any:
    """A setting with a command-line option --NAME of this kind (default: the default's), default and help."""
    return field(default=default, metadata={"help": help_text, "type": kind or type(default)})


# the steps of a build in order: their work folders, and what their results depend on
STEPS = [
    (("map", "exact", "near", "shingles", "verify"), {
        "inputs", "chunk_mb", "extractor", "text_field", "min_chars", "min_alpha", "blocked_domains",
        "near_threshold", "num_perm", "minhash_bands", "minhash_rows", "shingle", "seed",
        "decontaminate", "decontaminate_threshold", "quality"}),
    (("decide",), {"valid_fraction", "quality_alpha", "quality_threshold"}),
    (("sample", TOKENIZER_FILE), {"tokenizer", "vocab_size", "tokenizer_sample"}),
    (("shards", "out"), {"max_shard_tokens"}),
]


@dataclass(frozen=True)
class BuildSettings:
    """Everything that decides a build's output; written to the manifest, checked on resume."""

    tokenizer: str | None = None  # --tokenizer MODEL, or None with --train-tokenizer
    vocab_size: int | None = None  # with tokenizer=None
    valid_fraction: float = _option(0.05, "share of documents held out in OUT/valid (by a hash of the text)")
    extractor: str = _option("trafilatura", "HTML main-text extractor: trafilatura (more accurate) or "
                             "resiliparse (faster)")
    text_field: str = _option("text", "the text field of .jsonl lines and column of .parquet files")
    min_chars: int = _option(200, "drop documents shorter than this")
    min_alpha: float = _option(0.6, "drop documents whose non-space characters are under this share letters")
    blocked_domains: tuple[str, ...] = DEFAULT_BLOCKED_DOMAINS  # --block-domain
    near_threshold: float = _option(0.8, "MinHash Jaccard similarity that makes a near duplicate")
    num_perm: int = _option(128, "MinHash permutations")
    minhash_bands: int | None = _option(None, "LSH bands (default: chosen for --near-threshold, see "
                                        "pipelines/dedup.py)", int)
    minhash_rows: int | None = _option(None, "MinHash values an LSH band (default: chosen with the bands)",
                                       int)
    shingle: int = _option(5, "words a MinHash shingle")
    decontaminate: Mapping[str, str] = field(default_factory=dict)  # --decontaminate NAME=PATH ...
    decontaminate_threshold: float = _option(
        0.01, "drop when more than this share of a document's 8-grams is in an eval set")
    quality: str | None = _option(None, "GPT-3's quality filter: a classifier trained by python -m "
                                  "pipelines.quality train (score in each document's meta)", str)
    quality_alpha: float = _option(9.0, "with --quality: keep a document when np.random.pareto(alpha) > "
                                   "1 - score (GPT-3)")
    quality_threshold: float | None = _option(None, "with --quality: keep a document when its score is at "
                                              "least this, instead of the Pareto rule", float)
    tokenizer_sample: int = _option(100_000, "train the tokenizer on at most this many train documents")
    seed: int = _option(0, "seeds the split, the MinHash permutations and the tokenizer sample")
    max_shard_tokens: int = _option(50_000_000, "tokens a shard at most")
    chunk_mb: float | None = _option(None, "MiB of input a unit of work (default: input / 256, within 1-64)",
                                     float)

    def __post_init__(self) -> None:
        if (self.tokenizer is None) == (self.vocab_size is None):
            raise ValueError("give exactly one of --tokenizer MODEL or --train-tokenizer --vocab-size N")
        if not 0 <= self.valid_fraction < 1:
            raise ValueError(f"--valid-fraction {self.valid_fraction} must be in [0, 1)")
        if self.tokenizer_sample < 1:
            raise ValueError(f"--tokenizer-sample {self.tokenizer_sample} must be at least 1")
        if self.extractor not in EXTRACTORS:
            raise ValueError(f"--extractor {self.extractor}: choose one of {', '.join(EXTRACTORS)}")
        self.lsh_bands()  # refuses bands and rows a signature cannot give, before any work
        if self.chunk_mb is not None and self.chunk_mb <= 0:
            raise ValueError(f"--chunk-mb {self.chunk_mb} must be positive")
        self._check_quality()
        object.__setattr__(self, "blocked_domains", tuple(self.blocked_domains))
        object.__setattr__(self, "decontaminate", {k: str(v) for k, v in self.decontaminate.items()})
        if self.tokenizer is not None:
            object.__setattr__(self, "tokenizer", str(self.tokenizer))
            try:
                Tokenizer.load(self.tokenizer)
            except (OSError, ValueError) as err:
                raise ValueError(f"--tokenizer {self.tokenizer}: {err}; give a sentencepiece model, e.g. "
                                 "the tokenizer.model of an earlier build") from None

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """The command-line options of every setting, with the defaults and help written above."""
        tok = parser.add_mutually_exclusive_group(required=True)
        tok.add_argument("--tokenizer", metavar="MODEL", help="an existing sentencepiece model")
        tok.add_argument("--train-tokenizer", action="store_true", help="train a BPE on the train split")
        parser.add_argument("--vocab-size", type=int, default=50257,
                            help="with --train-tokenizer (default 50257)")
        parser.add_argument("--block-domain", nargs="*", default=list(DEFAULT_BLOCKED_DOMAINS),
                            metavar="DOMAIN", help="drop documents from these domains and their subdomains "
                            "(default wikipedia.org)")
        parser.add_argument("--decontaminate", nargs="+", default=[], metavar="NAME=PATH",
                            help="drop training documents sharing 8-grams with these eval sets")
        for f in dataclasses.fields(cls):
            if "help" in f.metadata:
                parser.add_argument(f"--{f.name.replace('_', '-')}", type=f.metadata["type"],
                                    default=f.default, help=f"{f.metadata['help']} (default {f.default})")

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> BuildSettings:
        simple = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if "help" in f.metadata}
        return cls(tokenizer=args.tokenizer, vocab_size=args.vocab_size if args.train_tokenizer else None,
                   blocked_domains=args.block_domain,
                   decontaminate=parse_named(args.decontaminate, "--decontaminate"), **simple)

    def lsh_bands(self) -> tuple[int, int]:
        """(bands, rows) of the near-dedup LSH: the options, else chosen for the threshold; one
        option alone takes the most of the other that the signature holds."""
        bands, rows = self.minhash_bands, self.minhash_rows
        if bands is None and rows is None:
            return lsh_bands(self.near_threshold, self.num_perm)
        for name, value in (("--minhash-bands", bands), ("--minhash-rows", rows)):
            if value is not None and not 1 <= value <= self.num_perm:
                raise ValueError(f"{name} {value} must be between 1 and --num-perm {self.num_perm}")
        bands, rows = bands or self.num_perm // rows, rows or self.num_perm // bands
        check_bands(bands, rows, self.num_perm)
        return bands, rows

    def _check_quality(self) -> None:
        """Refuse quality settings that cannot work, and a missing or foreign model, before any work."""
        if self.quality_alpha <= 0:
            raise ValueError(f"--quality-alpha {self.quality_alpha} must be positive (GPT-3 used 9)")
        if self.quality_threshold is not None and not 0 <= self.quality_threshold <= 1:
            raise ValueError(f"--quality-threshold {self.quality_threshold} must be in [0, 1]")
        if self.quality is None:
            if self.quality_threshold is not None:
                raise ValueError("--quality-threshold needs --quality MODEL")
            return
        object.__setattr__(self, "quality", str(self.quality))
        QualityModel.load(self.quality)

    def chunk_bytes(self, total_bytes: int) -> int:
        if self.chunk_mb is not None:
            return max(1, int(self.chunk_mb * MIB))
        return int(min(64 * MIB, max(MIB, total_bytes / 256)))

    def manifest(self) -> dict[str, Any]:
        # the model's sha256 too: a continued build redoes the scores of a model retrained in place
        model = self.quality and {"model": self.quality, "sha256": file_sha256(self.quality)}
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "tokenizer"} | {
            "blocked_domains": list(self.blocked_domains), "quality": model}
