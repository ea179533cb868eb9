"""GPT-2's byte-level BPE read from encoder.json + vocab.bpe encodes as transformers' GPT-2 tokenizer.

The files are a real byte-level BPE trained here with Hugging Face `tokenizers` on bundled LAMBADA
text (GPT-2's own 50k vocabulary is not bundled); they have GPT-2's format and pre-tokenizer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

from megagpt import checkpoint
from megagpt.checkpoint import huggingface as convert
from megagpt.formats.tokenizer import GPT2Tokenizer, load_tokenizer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    lines = (ROOT / "data/eval/lambada/lambada_test.jsonl").read_text().splitlines()
    return [json.loads(line)["text"] for line in lines[:400]]


@pytest.fixture(scope="module")
def bpe_files(texts, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bpe")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts[:300], vocab_size=1000, special_tokens=["<|endoftext|>"])
    bpe.save_model(str(folder))  # vocab.json + merges.txt
    shutil.move(folder / "vocab.json", folder / "encoder.json")
    shutil.move(folder / "merges.txt", folder / "vocab.bpe")
    return folder


def test_encodes_like_transformers_and_round_trips(bpe_files, texts):
    ours = load_tokenizer(bpe_files)
    assert isinstance(ours, GPT2Tokenizer)
    hf = GPT2TokenizerFast(vocab=str(bpe_files / "encoder.json"), merges=str(bpe_files / "vocab.bpe"))
    for text in [*texts[300:], "Ünïcödé — 3.14 ’quotes’ \n\n  spaces\t", "emoji 🙂 done"]:
        assert ours.encode(text) == hf.encode(text), text
        assert ours.decode(ours.encode(text)) == text
    assert ours.eos_id == hf.convert_tokens_to_ids("<|endoftext|>")


def test_imported_gpt2_keeps_its_bpe_through_export(bpe_files, tmp_path):
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=1000, n_positions=64))
    hf.save_pretrained(tmp_path / "hf")
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copy(bpe_files / name, tmp_path / "hf" / name)
    assert convert.main(["from-hf", str(tmp_path / "hf"), str(tmp_path / "model")]) == 0
    model, tokenizer, _ = checkpoint.load_pretrained(tmp_path / "model", device="cpu")
    assert isinstance(tokenizer, GPT2Tokenizer)
    assert convert.main(["to-hf", str(tmp_path / "model"), str(tmp_path / "out")]) == 0
    hf_tok = GPT2TokenizerFast.from_pretrained(tmp_path / "out")
    text = "She looked at the door and smiled."
    assert hf_tok.encode(text) == tokenizer.encode(text)
    idx = torch.tensor([tokenizer.encode(text)])
    with torch.no_grad():
        expected = GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()(idx).logits
        torch.testing.assert_close(model(idx)[0], expected, atol=1e-5, rtol=0)
