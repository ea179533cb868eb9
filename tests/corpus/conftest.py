"""Real text shared by the corpus tests: the sample pages' human-written main text and the eval sets."""

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAMBADA = ROOT / "data/eval/lambada/lambada_test.jsonl"
WIKITEXT = ROOT / "data/eval/wikitext-2-raw/wiki.test.raw"


@pytest.fixture(scope="session")
def articles() -> list[str]:
    """The 181 sample pages' main text from ground-truth.json (no extraction needed)."""
    truth = json.loads((ROOT / "data/sample/ground-truth.json").read_text())
    return [truth[k]["articleBody"] for k in sorted(truth)]


@pytest.fixture(scope="session")
def lambada() -> list[str]:
    return [json.loads(line)["text"] for line in LAMBADA.read_text().splitlines()]


@pytest.fixture(scope="session")
def wikitext() -> str:
    return WIKITEXT.read_text()


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path
