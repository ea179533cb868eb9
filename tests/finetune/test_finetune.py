"""GPT-1 fine-tuning: the four input transformations, and a real 2-rank DeepSpeed ZeRO-3 run from
a trained checkpoint on a task derived from real text, saved and loaded back."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from megagpt import checkpoint
from megagpt.formats.tokenizer import Tokenizer
from megagpt.tasks.finetune import (
    TaskSpec,
    accuracy,
    load_examples,
    load_finetuned,
    transform,
    with_task_tokens,
)
from tests.finetune.tasks import write_jsonl
from tests.train.conftest import ROOT, child_env, free_port


@pytest.fixture(scope="module")
def tokenizer(corpus) -> Tokenizer:
    return Tokenizer(corpus / "tokenizer.model")


def test_the_four_input_transformations(tokenizer):
    enc = tokenizer.encode
    spec = TaskSpec("classification", 2, start=512, delim=513, extract=514)
    row = {"text": "Good film.", "label": 1}
    assert transform(spec, tokenizer, row, 32) == [[512, *enc("Good film."), 514]]
    spec.task = "entailment"
    row = {"premise": "A man sleeps.", "hypothesis": "Someone rests.", "label": 0}
    expected = [512, *enc("A man sleeps."), 513, *enc("Someone rests."), 514]
    assert transform(spec, tokenizer, row, 32) == [expected]
    spec.task = "similarity"
    a, b = transform(spec, tokenizer, {"text_a": "It rains.", "text_b": "Rain falls.", "label": 1}, 32)
    assert a == [512, *enc("It rains."), 513, *enc("Rain falls."), 514]
    assert b == [512, *enc("Rain falls."), 513, *enc("It rains."), 514]
    spec.task = "multiple_choice"
    row = {"context": "The cat sat on the", "choices": ["mat", "moon"], "label": 0}
    assert transform(spec, tokenizer, row, 32) == [
        [512, *enc("The cat sat on the"), 513, *enc(" mat"), 514],
        [512, *enc("The cat sat on the"), 513, *enc(" moon"), 514],
    ]
    # Too long: the front of the first text goes; the delimiter, answer and extract stay.
    long = transform(spec, tokenizer, {"context": "word " * 50, "choices": ["end"], "label": 0}, 16)[0]
    assert len(long) == 16 and long[0] == 512 and long[-len(enc(" end")) - 2 :] == [513, *enc(" end"), 514]
    with pytest.raises(ValueError, match=r"lacks \['choices'\]"):
        transform(spec, tokenizer, {"context": "x", "label": 0}, 16)


@pytest.mark.slow  # trained_run: train.py, 2 ranks, 300 steps
def test_added_tokens_extend_the_vocabulary_and_keep_the_rest(trained_run):
    model, _, _ = checkpoint.load_pretrained(trained_run, device="cpu")
    bigger, first = with_task_tokens(model)
    assert first == 512 and bigger.config.vocab_size == 515
    assert bigger.lm_head.weight is bigger.transformer.wte.weight
    idx = torch.tensor([[5, 9, 100, 7]])
    with torch.no_grad():
        torch.testing.assert_close(bigger(idx)[0][..., :512], model(idx)[0], atol=1e-6, rtol=0)


@pytest.mark.slow
def test_two_rank_zero3_fine_tuning_learns_and_saves_a_loadable_model(novel_model, word_order_task, tmp_path):
    train, valid = word_order_task
    out = tmp_path / "model"
    cmd = ["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), "megagpt/finetune.py",
           "--checkpoint", str(novel_model), "--task", "classification", "--train", str(train),
           "--valid", str(valid), "--zero-stage", "3", "--lr", "1e-3", "--out", str(out),
           "--json", str(tmp_path / "result.json")]
    proc = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2000 train / 500 valid examples, 186 steps of 32, lambda 0.50, zero 3" in proc.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["valid_acc"] > 0.65  # two balanced classes: chance is 0.5 (std 0.022 on 500)

    model, tok = load_finetuned(out)
    assert tok.sha256 == checkpoint.find_tokenizer(checkpoint.resolve(novel_model)).sha256
    assert model.spec.extract == 1026  # start, delimiter, extract appended to the 1,024 pieces
    examples = load_examples(valid, model.spec, tok, model.gpt.config.block_size)
    assert accuracy(model, examples, "cpu") == pytest.approx(result["valid_acc"])
    assert json.loads((out / "finetune.json").read_text())["task"] == "classification"
    bare, _, _ = checkpoint.load_pretrained(out, device="cpu")  # the body alone is a model folder
    assert bare.config.vocab_size == 1027


def test_bad_labels_are_refused_with_the_file_named(tokenizer, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "hello", "label": 3}])
    spec = TaskSpec("classification", 2, 512, 513, 514)
    with pytest.raises(ValueError, match="bad.jsonl: label 3 is out of range for 2 classes"):
        load_examples(bad, spec, tokenizer, 32)
