"""lm-evaluation-harness evaluates an exported model from its local folder, and agrees with
megagpt.tasks.evaluate: the same LAMBADA examples give the same accuracy and perplexity."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from megagpt import checkpoint
from megagpt.checkpoint import huggingface as convert
from megagpt.tasks.evaluate import run_task
from tests.train.conftest import ROOT, VENV_BIN

pytestmark = pytest.mark.slow
LIMIT = 40


def test_lm_eval_on_the_exported_folder_matches_megagpt_evaluate(trained_run, tmp_path):
    assert convert.main(["to-hf", str(trained_run), str(tmp_path / "hf")]) == 0
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    cmd = [str(VENV_BIN / "lm_eval"), "--model", "hf", "--model_args",
           f"pretrained={tmp_path / 'hf'},dtype=float32", "--include_path", "configs/lm_eval",
           "--tasks", "lambada_local", "--device", "cpu", "--limit", str(LIMIT), "--batch_size", "8",
           "--output_path", str(tmp_path / "results")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (results,) = (tmp_path / "results").rglob("results_*.json")
    theirs = json.loads(results.read_text())["results"]["lambada_local"]
    assert theirs["sample_len"] == LIMIT

    model, tokenizer, _ = checkpoint.load_pretrained(trained_run, device="cpu")
    ours = run_task(model, tokenizer, "lambada", limit=LIMIT, progress=False)
    print(f"lm-eval: acc {theirs['acc,none']}, ppl {theirs['perplexity,none']:.6g}; "
          f"megagpt.tasks.evaluate: acc {ours['acc']}, ppl {ours['ppl']:.6g}")
    assert theirs["acc,none"] == ours["acc"]
    assert theirs["perplexity,none"] == pytest.approx(ours["ppl"], rel=1e-4)
