"""What GPT-1 fine-tuning is for: a pre-trained body learns a task from few labels where the same
model from random init does not. The task asks whether an excerpt of a novel is in its real word
order or shuffled, which the words alone cannot tell: only a model of the language can."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.train.conftest import ROOT, child_env

pytestmark = pytest.mark.slow


def finetune(checkpoint, train, valid, out, *extra: str) -> float:
    cmd = [sys.executable, "-m", "megagpt.finetune", "--checkpoint", str(checkpoint), "--task",
           "classification", "--train", str(train), "--valid", str(valid), "--lr", "1e-3",
           "--json", str(out), *extra]
    proc = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())["valid_acc"]


def test_fine_tuning_a_pre_trained_model_beats_random_init(novel_model, word_order_task, tmp_path):
    train, valid = word_order_task
    pretrained = finetune(novel_model, train, valid, tmp_path / "pretrained.json")
    random_init = finetune(novel_model, train, valid, tmp_path / "random.json", "--random-init")
    print(f"valid accuracy: pre-trained {pretrained:.3f}, random init {random_init:.3f}")
    assert random_init < 0.6  # balanced classes, 500 examples: chance is 0.5 +- 0.022
    assert pretrained > random_init + 0.15
