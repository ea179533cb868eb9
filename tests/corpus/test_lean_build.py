"""A build loads only what its inputs need: no HTML extractors, sentencepiece or numba on import;
word hashes by numpy equal numba's; the tokenizer is trained in a child process."""

import json
import subprocess
import sys

import numpy as np
import pytest

from megagpt.formats.tokenizer import Tokenizer
from pipelines.build import build
from pipelines.ngrams import _SEPARATOR, _compiled, _hash_words_numpy, _word_characters
from tests.corpus.conftest import ROOT

HEAVY = ("trafilatura", "lxml", "resiliparse", "sentencepiece", "numba")


def loaded_after(code: str) -> set[str]:
    """Which of HEAVY a fresh interpreter has in sys.modules after running `code`."""
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return set(result.stdout.split())


def test_importing_the_build_loads_no_extractor_tokenizer_or_numba():
    assert loaded_after("import pipelines.build") == set()
    # the probe sees them when they are loaded: extracting one page brings the HTML stack
    html = "<html><body><article><p>" + "Words of a page. " * 30 + "</p></article></body></html>"
    assert {"trafilatura", "lxml"} <= loaded_after(
        f"from pipelines.extract import extract_html\nextract_html({html!r})")


def hashes_both_ways(texts: list[str]) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    lowered = [t.lower() for t in texts]
    code_points = np.frombuffer((_SEPARATOR.join(lowered) + _SEPARATOR).encode("utf-32-le", "surrogatepass"),
                                np.uint32)
    ends = np.cumsum([len(t) + 1 for t in lowered]) - 1
    hashes, counts = np.empty(len(code_points), np.uint64), np.zeros(len(texts), np.int64)
    n = _compiled()(code_points, _word_characters(), ends, hashes, counts)
    return (hashes[:n], counts), _hash_words_numpy(code_points, _word_characters(), ends)


def test_numpy_word_hashes_equal_the_compiled_loop(articles):
    # the last two: words far longer than the rest, which a plain loop ends
    tricky = ["", "!!! ...", "Don't  STOP!", "snake_case and 3.14", "é" * 40 + " 😀 word",
              "x" * 3000 + " tail", "short " * 20 + "y" * 50]
    for texts in (articles, tricky, [articles[0]]):
        (compiled, compiled_counts), (plain, plain_counts) = hashes_both_ways(texts)
        assert len(compiled) > 0 and np.array_equal(compiled, plain)
        assert np.array_equal(compiled_counts, plain_counts)


def test_tokenizer_sample_is_bounded_on_one_rank(articles, tmp_path, caplog):
    raw = tmp_path / "docs.jsonl"
    raw.write_text("".join(json.dumps({"text": t}) + "\n" for t in articles[:40]))
    with caplog.at_level("INFO", logger="pipelines.build"):
        build([raw], tmp_path / "out", vocab_size=600, valid_fraction=0, tokenizer_sample=25, workers=1)
    assert "BPE tokenizer on 25 documents" in caplog.text  # of 40 train documents


def test_tokenizer_is_trained_in_a_child_process(articles, tmp_path, monkeypatch):
    def not_here(*args, **kwargs):
        raise AssertionError("the tokenizer was trained in the build's own process")

    monkeypatch.setattr(Tokenizer, "train", not_here)  # the spawned child imports the real one
    raw = tmp_path / "docs.jsonl"
    raw.write_text("".join(json.dumps({"text": t}) + "\n" for t in articles[:30]))
    manifest = build([raw], tmp_path / "out", vocab_size=600, valid_fraction=0, workers=1)
    assert manifest["tokenizer"]["vocab_size"] == 600
    with pytest.raises(ValueError, match="--vocab-size 100000 cannot be trained"):
        build([raw], tmp_path / "again", vocab_size=100_000, valid_fraction=0, workers=1)
