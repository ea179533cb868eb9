"""Byte-level BPE tokenizer (sentencepiece): train on a corpus, load, encode, decode.

Settings follow GPT-2's intent rather than sentencepiece's defaults: no unicode normalisation
and no whitespace collapsing, so decode(encode(text)) == text for any text; byte fallback, so
nothing is ever unknown; newlines are a piece of their own (sentencepiece would otherwise treat
them as whitespace to drop); digits are split, which makes numbers tokenize consistently.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import sentencepiece as spm

EOS_PIECE = "<|endoftext|>"


class Tokenizer:
    """A sentencepiece BPE model with an end-of-text token, identified by the sha256 of its file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"tokenizer model {self.path} does not exist")
        data = self.path.read_bytes()
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(data)
        except RuntimeError as err:
            raise ValueError(f"{self.path} is not a sentencepiece model: {err}") from None
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.eos_id = self.sp.piece_to_id(EOS_PIECE)
        if self.sp.id_to_piece(self.eos_id) != EOS_PIECE:
            raise ValueError(f"{self.path} has no {EOS_PIECE} piece; train it with Tokenizer.train")

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        return cls(path)

    @classmethod
    def train(cls, texts: Iterable[str], model_path: str | Path, vocab_size: int, *,
              seed: int = 0) -> Tokenizer:
        """Train a BPE model of `vocab_size` pieces on `texts` and write it to `model_path`."""
        del seed  # BPE training is deterministic; kept so callers can pass their run seed
        texts = list(texts)
        model_path = Path(model_path)
        model_path.parent.mkdir(parents=True, exist_ok=True)
        with model_path.open("wb") as out:
            spm.SentencePieceTrainer.train(
                sentence_iterator=_lines(texts),
                model_writer=out,
                model_type="bpe",
                vocab_size=vocab_size,
                byte_fallback=True,
                character_coverage=_character_coverage(texts, vocab_size),
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                add_dummy_prefix=False,
                allow_whitespace_only_pieces=True,
                split_digits=True,
                user_defined_symbols=["\n"],
                unk_id=0,
                eos_id=1,
                eos_piece=EOS_PIECE,
                bos_id=-1,
                pad_id=-1,
                max_sentence_length=1 << 16,
                num_threads=1,  # one thread makes piece order reproducible
                minloglevel=2,
            )
        return cls(model_path)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([int(i) for i in ids])


def _character_coverage(texts: list[str], vocab_size: int, target: float = 0.9995) -> float:
    """sentencepiece's default coverage, lowered when its characters would crowd out merges.

    Characters outside the coverage are still encoded, as UTF-8 bytes (byte fallback). We keep
    at most half of the non-byte pieces for single characters; sentencepiece accepts coverages
    down to 0.98, below that the vocabulary is simply too small for the text.
    """
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(text)
    freq = sorted(counts.values(), reverse=True)
    budget = max(1, (vocab_size - 256 - 3) // 2)
    total = sum(freq)
    if not total or len(freq) <= budget:
        return target
    coverage = min(target, sum(freq[:budget]) / total)
    if coverage < 0.98:
        needed = next(i for i, c in enumerate(itertools.accumulate(freq), 1) if c >= 0.98 * total)
        raise ValueError(f"vocab_size {vocab_size} is too small for this text: 98% of it uses {needed} "
                         f"distinct characters; use a vocab_size of at least {2 * needed + 259}")
    return coverage


def _lines(texts: Iterable[str]) -> Iterator[str]:
    """sentencepiece trains on sentences; keep each line's newline as a piece it can learn."""
    for text in texts:
        for line in text.splitlines(keepends=True):
            if line.strip():
                yield line
