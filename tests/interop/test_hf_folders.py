"""Hugging Face folders both ways: an export's tokenizer loads in transformers 4.x and 5.x, an
import refuses the GPT-2 variants megagpt's model is not (instead of mis-importing them), and a
folder with only transformers 5's tokenizer.json imports with its BPE."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

from megagpt import checkpoint
from megagpt.checkpoint import huggingface as convert
from megagpt.config import ModelConfig
from megagpt.formats.tokenizer import GPT2Tokenizer, Tokenizer
from megagpt.model.gpt import GPT
from tests.interop.test_gpt2_bpe import bpe_files, texts  # noqa: F401 (fixtures)

# Tokenizer classes of transformers 4.57 (only 5.x is installed here): 5.x writes its own
# `TokenizersBackend`, which 4.x's AutoTokenizer cannot find.
TRANSFORMERS_4_TOKENIZERS = {"PreTrainedTokenizerFast", "GPT2Tokenizer", "GPT2TokenizerFast",
                             "LlamaTokenizerFast", "T5TokenizerFast"}
TINY = dict(n_layer=2, n_head=2, n_embd=32, vocab_size=1000, n_positions=64)


@pytest.fixture
def sentencepiece_model(corpus, tmp_path) -> Path:
    torch.manual_seed(0)
    model = GPT(ModelConfig.preset("gpt2-tiny", block_size=48))
    tokenizer = Tokenizer(corpus / "tokenizer.model")
    checkpoint.save_model(tmp_path / "sp", model.state_dict(), model.config, tokenizer)
    return tmp_path / "sp"


@pytest.fixture
def gpt2_bpe_model(bpe_files, tmp_path) -> Path:  # noqa: F811
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(**TINY)).save_pretrained(tmp_path / "hf")
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copy(bpe_files / name, tmp_path / "hf" / name)
    assert convert.main(["from-hf", str(tmp_path / "hf"), str(tmp_path / "bpe")]) == 0
    return tmp_path / "bpe"


@pytest.mark.parametrize("folder, name, context", [("sentencepiece_model", "PreTrainedTokenizerFast", 48),
                                                   ("gpt2_bpe_model", "GPT2TokenizerFast", 64)])
def test_exported_tokenizer_names_a_class_transformers_4_has(folder, name, context, request, tmp_path):
    model = request.getfixturevalue(folder)
    assert convert.main(["to-hf", str(model), str(tmp_path / "out")]) == 0
    config = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == name and name in TRANSFORMERS_4_TOKENIZERS
    assert config["model_max_length"] == context
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    _, ours, _ = checkpoint.load_pretrained(model, device="cpu")
    text = "She looked at the door and smiled.\nThen she left."
    assert hf_tok.encode(text) == ours.encode(text) and hf_tok.model_max_length == context


def saved_hf(tmp_path: Path, bpe_files: Path, **config) -> Path:  # noqa: F811
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(**TINY, **config)).save_pretrained(tmp_path / "hf")
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copy(bpe_files / name, tmp_path / "hf" / name)
    return tmp_path / "hf"


@pytest.mark.parametrize("config, reason", [
    ({"tie_word_embeddings": False}, "tie_word_embeddings is false"),
    ({"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon is 1e-06, megagpt's is 1e-05"),
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx is true"),
    ({"scale_attn_weights": False}, "scale_attn_weights is false"),
    ({"n_inner": 64}, "n_inner is 64: megagpt's MLP is 4 x n_embd = 128"),
])
def test_import_refuses_what_megagpt_cannot_reproduce(config, reason, bpe_files, tmp_path, capsys):  # noqa: F811
    hf = saved_hf(tmp_path, bpe_files, **config)
    assert convert.main(["from-hf", str(hf), str(tmp_path / "model")]) == 2
    err = capsys.readouterr().err
    assert f"{hf / 'config.json'} describes a model megagpt's GPT-2 is not" in err and reason in err
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("config", [{"reorder_and_upcast_attn": True}, {"n_inner": 128}])
def test_import_of_equivalent_variants_keeps_logits_equal(config, bpe_files, tmp_path):  # noqa: F811
    hf = saved_hf(tmp_path, bpe_files, **config)
    assert convert.main(["from-hf", str(hf), str(tmp_path / "model")]) == 0
    model, _, _ = checkpoint.load_pretrained(tmp_path / "model", device="cpu")
    idx = torch.randint(0, 1000, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = GPT2LMHeadModel.from_pretrained(hf).eval()(idx).logits
        torch.testing.assert_close(model.eval()(idx)[0][..., :1000], expected, atol=1e-5, rtol=0)


def test_import_reads_the_bpe_of_a_folder_with_only_tokenizer_json(bpe_files, texts, tmp_path):  # noqa: F811
    hf = saved_hf(tmp_path, bpe_files)
    files = {"vocab": str(bpe_files / "encoder.json"), "merges": str(bpe_files / "vocab.bpe")}
    GPT2TokenizerFast(**files).save_pretrained(hf)  # as transformers 5 saves it: tokenizer.json only
    for name in ("encoder.json", "vocab.bpe", "vocab.json", "merges.txt"):
        (hf / name).unlink(missing_ok=True)
    assert (hf / "tokenizer.json").is_file()
    assert convert.main(["from-hf", str(hf), str(tmp_path / "model")]) == 0
    _, ours, _ = checkpoint.load_pretrained(tmp_path / "model", device="cpu")
    reference = GPT2Tokenizer(bpe_files / "encoder.json", bpe_files / "vocab.bpe")
    assert isinstance(ours, GPT2Tokenizer) and ours.eos_id == reference.eos_id
    for text in texts[300:340]:
        assert ours.encode(text) == reference.encode(text)


def test_a_tokenizer_json_that_is_not_byte_level_bpe_is_named(corpus, bpe_files, tmp_path, capsys):  # noqa: F811
    hf = saved_hf(tmp_path, bpe_files)
    for name in ("encoder.json", "vocab.bpe"):
        (hf / name).unlink()
    convert.sentencepiece_to_hf(Tokenizer(corpus / "tokenizer.model")).save_pretrained(hf)
    assert convert.main(["from-hf", str(hf), str(tmp_path / "model")]) == 2
    assert f"{hf / 'tokenizer.json'} holds a BPE model with pre-tokenizer" in capsys.readouterr().err
