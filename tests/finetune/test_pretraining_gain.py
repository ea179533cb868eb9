"""What GPT-1 fine-tuning is for: a pre-trained body learns a task from few labels where the same
model from random init does not. Pre-training here is a real 2-rank DeepSpeed run on novels
(LAMBADA passages 0-3999); the task asks whether a 16-word excerpt is in its real word order or
shuffled, which the words alone cannot tell: only a model of the language can."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipelines.build import build
from tests.finetune.tasks import shuffled_or_not, write_jsonl, write_passages
from tests.train.conftest import ROOT, run_training

pytestmark = pytest.mark.slow


def finetune(checkpoint, train, valid, out, *extra: str) -> float:
    cmd = [sys.executable, "-m", "megagpt.finetune", "--checkpoint", str(checkpoint), "--task",
           "classification", "--train", str(train), "--valid", str(valid), "--lr", "1e-3",
           "--json", str(out), *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())["valid_acc"]


def test_fine_tuning_a_pre_trained_model_beats_random_init(tmp_path):
    shards = tmp_path / "novels"
    build([write_passages(tmp_path / "novels.jsonl", 0, 4000)], shards, vocab_size=1024,
          valid_fraction=0.05, seed=0)
    run = tmp_path / "pretrained"
    run_training(run, shards, "model.n_layer=4", "model.n_head=4", "model.n_embd=128",
                 "model.vocab_size=1024", "model.block_size=64", "train.micro_batch_size=16",
                 "train.max_steps=600", "train.warmup_steps=30", "log.interval=100",
                 "eval.interval=0", "sample.max_new_tokens=0")
    # Task examples: 2,000 from the pre-training passages (labels are new), 500 held out from unseen ones.
    train = write_jsonl(tmp_path / "train.jsonl", shuffled_or_not(0, 2000, seed=0, words=16))
    valid = write_jsonl(tmp_path / "valid.jsonl", shuffled_or_not(4000, 4500, seed=1, words=16))
    pretrained = finetune(run, train, valid, tmp_path / "pretrained.json")
    random_init = finetune(run, train, valid, tmp_path / "random.json", "--random-init")
    print(f"valid accuracy: pre-trained {pretrained:.3f}, random init {random_init:.3f}")
    assert random_init < 0.6  # balanced classes, 500 examples: chance is 0.5 +- 0.022
    assert pretrained > random_init + 0.15
