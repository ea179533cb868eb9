"""Labelled tasks derived mechanically from real text, for fine-tuning tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAMBADA = ROOT / "data/eval/lambada/lambada_test.jsonl"


def passages(start: int, stop: int) -> list[str]:
    lines = LAMBADA.read_text().splitlines()[start:stop]
    return [" ".join(json.loads(line)["text"].split()) for line in lines]


def write_passages(path: Path, start: int, stop: int) -> Path:
    """LAMBADA passages [start, stop) as a JSONL corpus (one document each) for pipelines.build:
    novels, the domain GPT-1 was pre-trained on (BooksCorpus)."""
    return write_jsonl(path, [{"text": text} for text in passages(start, stop)])


def next_words(start: int, stop: int, seed: int, context: int = 8, span: int = 3) -> list[dict]:
    """Multiple choice: after `context` words of a LAMBADA passage, which of two `span`-word
    continuations really follows: the passage's own next words, or words from another passage."""
    rng = random.Random(seed)
    texts = [t.split() for t in passages(start, stop)]
    rows = []
    for i, words in enumerate(texts):
        true = false = "x" * 99
        while max(len(true), len(false)) > 30:  # short continuations: the sequences fit block 32
            at = rng.randrange(context, len(words) - span)
            other = texts[(i + 1 + rng.randrange(len(texts) - 1)) % len(texts)]
            j = rng.randrange(len(other) - span)
            true, false = " ".join(words[at : at + span]), " ".join(other[j : j + span])
        label = rng.randrange(2)
        rows.append({"context": " ".join(words[at - context : at]),
                     "choices": [false, true] if label else [true, false], "label": label})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def shuffled_or_not(start: int, stop: int, seed: int, words: int = 12) -> list[dict]:
    """Classification: is a 12-word LAMBADA excerpt in its real order (label 1) or are its words
    shuffled (label 0)? The two classes hold the same words, so only word order tells them apart."""
    rng = random.Random(seed)
    rows = []
    for text in passages(start, stop):
        w = text.split()
        at = rng.randrange(len(w) - words)
        excerpt = w[at : at + words]
        shuffled = rng.sample(excerpt, len(excerpt))
        label = rng.randrange(2)
        rows.append({"text": " ".join(excerpt if label else shuffled), "label": label})
    return rows
