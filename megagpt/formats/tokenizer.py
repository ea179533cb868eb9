"""Byte-level BPE tokenizers: megagpt's own (sentencepiece; train on a corpus, load, encode, decode)
and GPT-2's (read from OpenAI's `encoder.json` + `vocab.bpe`), so imported GPT-2 weights keep theirs.

Settings follow GPT-2's intent rather than sentencepiece's defaults: no unicode normalisation
and no whitespace collapsing, so decode(encode(text)) == text for any text; byte fallback, so
nothing is ever unknown; newlines are a piece of their own (sentencepiece would otherwise treat
them as whitespace to drop); digits are split, which makes numbers tokenize consistently.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import regex

EOS_PIECE = "<|endoftext|>"
SENTENCEPIECE_FILE = "tokenizer.model"
GPT2_FILES = ("encoder.json", "vocab.bpe")


class Tokenizer:
    """A sentencepiece BPE model with an end-of-text token, identified by the sha256 of its file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"tokenizer model {self.path} does not exist")
        data = self.path.read_bytes()
        import sentencepiece as spm  # here, not at the top: a corpus build that never tokenizes skips it

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
        import sentencepiece as spm

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

    def files(self) -> dict[Path, str]:
        """The file(s) that make this tokenizer, and the name each has inside a checkpoint."""
        return {self.path: SENTENCEPIECE_FILE}


class GPT2Tokenizer:
    """GPT-2's byte-level BPE, as OpenAI's encoder.py (MIT) computes it, from encoder.json (piece
    -> id) and vocab.bpe (merges, best first). Hugging Face calls the same files vocab.json and
    merges.txt; either name is accepted."""

    # GPT-2's pre-tokenizer: contractions, letter runs, digit runs, other runs, each with one
    # leading space, and whitespace.
    PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")

    def __init__(self, encoder_file: str | Path, merges_file: str | Path):
        self.encoder_file, self.merges_file = Path(encoder_file), Path(merges_file)
        for f in (self.encoder_file, self.merges_file):
            if not f.is_file():
                raise FileNotFoundError(f"GPT-2 tokenizer file {f} does not exist")
        try:
            self.encoder: dict[str, int] = json.loads(self.encoder_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{self.encoder_file} is not GPT-2's encoder.json (piece -> id): {e}") from None
        lines = self.merges_file.read_text(encoding="utf-8").splitlines()
        merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
        if any(len(m) != 2 for m in merges):
            raise ValueError(f"{self.merges_file} is not GPT-2's vocab.bpe (one 'a b' merge a line)")
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.decoder = {i: piece for piece, i in self.encoder.items()}
        self.byte_to_char = _bytes_to_unicode()
        self.char_to_byte = {c: b for b, c in self.byte_to_char.items()}
        if EOS_PIECE not in self.encoder:
            raise ValueError(f"{self.encoder_file} has no {EOS_PIECE} entry")
        self.eos_id = self.encoder[EOS_PIECE]
        data = self.encoder_file.read_bytes() + self.merges_file.read_bytes()
        self.sha256 = hashlib.sha256(data).hexdigest()

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    @functools.lru_cache(maxsize=1 << 16)  # noqa: B019 (one tokenizer per process; words repeat)
    def _bpe(self, word: str) -> tuple[str, ...]:
        parts = tuple(word)
        while len(parts) > 1:
            pairs = set(zip(parts, parts[1:]))
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = tuple(merged)
        return parts

    def encode(self, text: str) -> list[int]:
        ids = []
        for word in self.PATTERN.findall(text):
            chars = "".join(self.byte_to_char[b] for b in word.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self._bpe(chars))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        chars = "".join(self.decoder[int(i)] for i in ids)
        return bytes(self.char_to_byte[c] for c in chars).decode("utf-8", errors="replace")

    def files(self) -> dict[Path, str]:
        return {self.encoder_file: GPT2_FILES[0], self.merges_file: GPT2_FILES[1]}


AnyTokenizer = Tokenizer | GPT2Tokenizer


def load_tokenizer(folder: str | Path, name: str | None = None) -> AnyTokenizer:
    """The tokenizer kept in `folder`: a sentencepiece `tokenizer.model` (or the file `name`), or
    GPT-2's encoder.json + vocab.bpe (Hugging Face's vocab.json + merges.txt)."""
    folder = Path(folder)
    if (folder / (name or SENTENCEPIECE_FILE)).is_file():
        return Tokenizer(folder / (name or SENTENCEPIECE_FILE))
    for encoder, merges in (GPT2_FILES, ("vocab.json", "merges.txt")):
        if (folder / encoder).is_file() and (folder / merges).is_file():
            return GPT2Tokenizer(folder / encoder, folder / merges)
    raise FileNotFoundError(
        f"no tokenizer in {folder}: expected {SENTENCEPIECE_FILE} (sentencepiece) or "
        f"{' + '.join(GPT2_FILES)} (GPT-2 BPE; vocab.json + merges.txt also work); copy them there"
    )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of the 256 bytes to printable characters (BPE works on these)."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)}
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


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
