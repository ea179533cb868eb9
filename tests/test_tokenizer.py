"""The BPE tokenizer: lossless on any text, deterministic, with an end-of-text token."""

import json
from pathlib import Path

import pytest

from megagpt.formats.tokenizer import EOS_PIECE, Tokenizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    truth = json.loads((ROOT / "data/sample/ground-truth.json").read_text())
    return [page["articleBody"] for page in truth.values()][:60]


@pytest.fixture(scope="module")
def tokenizer(texts, tmp_path_factory) -> Tokenizer:
    return Tokenizer.train(texts, tmp_path_factory.mktemp("tok") / "bpe.model", vocab_size=1024)


def test_round_trip_is_exact_on_real_and_awkward_text(tokenizer, texts):
    awkward = "  two  spaces\n\n\tTab, trailing \nemoji 😀, CJK 漢字, Ünïcödé, digits 2026-11-22\r\n"
    mixed_script = ("Русский текст, العربية من اليمين, हिन्दी देवनागरी, עברית, ไทย, 한국어, "
                    "e\u0301 (combining), Z\u200dW\u200bJ, 👩‍👩‍👧 family, \U0001d54f, \x00\x7f")
    for text in [*texts, awkward, mixed_script, "", "\n", " "]:
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text
        assert 0 not in ids  # byte fallback: nothing is unknown


def test_vocabulary_and_special_tokens(tokenizer, texts):
    assert tokenizer.vocab_size == 1024
    assert tokenizer.sp.id_to_piece(tokenizer.eos_id) == EOS_PIECE
    assert tokenizer.eos_id not in tokenizer.encode(" ".join(texts[:5]))
    assert tokenizer.encode("\n") == [tokenizer.sp.piece_to_id("\n")]
    assert len(tokenizer.encode(texts[0])) < len(texts[0].encode()) / 2  # it really merges


def test_training_is_deterministic(tokenizer, texts, tmp_path):
    again = Tokenizer.train(texts, tmp_path / "again.model", vocab_size=1024)
    assert again.sha256 == tokenizer.sha256
    assert Tokenizer.load(tokenizer.path).encode(texts[1]) == tokenizer.encode(texts[1])


def test_small_vocab_on_many_characters_leaves_rare_ones_to_bytes(texts, tmp_path):
    rare = "".join(chr(c) for c in range(0x4E00, 0x4E00 + 300))
    text = rare + " ".join(texts[:20])
    tok = Tokenizer.train([text], tmp_path / "small.model", vocab_size=600)
    assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode(rare)) == 3 * len(rare)  # one byte piece per UTF-8 byte


def test_vocab_too_small_for_the_text_says_what_would_do(tmp_path):
    text = "".join(chr(c) for c in range(0x4E00, 0x4E00 + 900))
    with pytest.raises(ValueError, match="vocab_size 400 is too small .* at least"):
        Tokenizer.train([text], tmp_path / "small.model", vocab_size=400)


def test_bad_model_file_is_named(tmp_path):
    bad = tmp_path / "broken.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="broken.model"):
        Tokenizer.load(bad)
    with pytest.raises(FileNotFoundError, match="missing.model"):
        Tokenizer.load(tmp_path / "missing.model")
