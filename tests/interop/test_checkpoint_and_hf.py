"""Checkpoints describe themselves and consolidate; Hugging Face export / import keeps logits equal."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from transformers import AutoTokenizer, GPT2LMHeadModel

from megagpt import checkpoint
from megagpt.checkpoint import huggingface as convert
from megagpt.config import ModelConfig
from megagpt.formats.tokenizer import Tokenizer
from megagpt.training.data import RankBatches, ShardDataset
from tests.train.conftest import ROOT, read_metrics


@pytest.mark.slow  # trained_run: train.py, 2 ranks, 300 steps
def test_checkpoint_is_self_describing_and_consolidates_to_the_trained_model(trained_run, corpus):
    folder = checkpoint.resolve(trained_run)
    assert folder.name == "step00000300"
    run_config = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert json.loads((folder / "model_config.json").read_text()) == run_config["model"]
    manifest = json.loads((corpus / "manifest.json").read_text())
    assert Tokenizer(folder / "tokenizer.model").sha256 == manifest["tokenizer"]["sha256"]

    state = checkpoint.consolidated_state_dict(folder)
    model, _, _ = checkpoint.load_pretrained(folder, device="cpu")
    assert set(state) == set(model.state_dict())
    # The consolidated weights give the loss the 2-rank ZeRO-3 engine measured at its last step:
    # the same first eval.batches micro-batches of each rank.
    cfg = ModelConfig(**run_config["model"])
    valid = ShardDataset(corpus / "valid", cfg.block_size, run_config["train"]["seed"])
    losses = []
    with torch.no_grad():
        for rank in (0, 1):
            batches = RankBatches(valid, run_config["train"]["micro_batch_size"], rank, 2)
            for _ in range(min(run_config["eval"]["batches"], batches.batches_per_epoch)):
                x, y = next(batches)
                losses.append(model(x, y)[1].item())
    engine_loss = [m for m in read_metrics(trained_run) if "eval_loss" in m][-1]["eval_loss"]
    assert sum(losses) / len(losses) == pytest.approx(engine_loss, abs=1e-4)


@pytest.mark.slow  # trained_run: train.py, 2 ranks, 300 steps
def test_export_to_hugging_face_and_back_keeps_logits_equal(trained_run, tmp_path):
    assert convert.main(["to-hf", str(trained_run), str(tmp_path / "hf")]) == 0
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    ours, tokenizer, _ = checkpoint.load_pretrained(trained_run, device="cpu")
    assert hf.config.eos_token_id == hf.generation_config.eos_token_id == tokenizer.eos_id
    idx = torch.tensor([tokenizer.encode("The government said on Tuesday that the new rules")])
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, ours(idx)[0], atol=1e-5, rtol=0)

    assert convert.main(["from-hf", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    back, back_tok, _ = checkpoint.load_pretrained(tmp_path / "back", device="cpu")
    assert back_tok.sha256 == tokenizer.sha256
    with torch.no_grad():
        torch.testing.assert_close(back(idx)[0], ours(idx)[0], atol=1e-5, rtol=0)


def test_exported_sentencepiece_tokenizer_gives_the_same_ids_in_transformers(corpus, tmp_path):
    ours = Tokenizer(corpus / "tokenizer.model")
    convert.sentencepiece_to_hf(ours).save_pretrained(tmp_path)
    theirs = AutoTokenizer.from_pretrained(tmp_path)
    lambada = ROOT / "data/eval/lambada/lambada_test.jsonl"
    texts = [json.loads(line)["text"] for line in lambada.read_text().splitlines()[:1000]]
    wiki = (ROOT / "data/eval/wikitext-2-raw/wiki.test.raw").read_text()
    texts += wiki.splitlines()[:1000] + [wiki[:100_000]]  # headings, blank lines, runs of spaces
    texts += ["  two leading spaces", "trailing  ", "tab\there", "\n\nnewlines\n", "1234 x5y6",
              "naïve café 中文 🎉", ""]
    for text in texts:
        ids = ours.encode(text)
        assert theirs(text, add_special_tokens=False)["input_ids"] == ids, text[:80]
        assert theirs.decode(ids) == ours.decode(ids)
    assert theirs.eos_token_id == ours.eos_id


def test_import_refuses_a_folder_that_is_not_a_saved_model(tmp_path, capsys):
    assert convert.main(["from-hf", str(tmp_path), str(tmp_path / "out")]) == 2
    assert "no config.json" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="neither model.safetensors nor a checkpoint's .metadata"):
        checkpoint.consolidated_state_dict(tmp_path)
