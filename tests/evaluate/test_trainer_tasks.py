"""The trainer runs megagpt.tasks.evaluate's tasks at evaluation time (eval.tasks) and logs them."""

from __future__ import annotations

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from megagpt import checkpoint
from megagpt.config import ConfigError, load_config
from megagpt.tasks import evaluate
from tests.train.conftest import read_metrics, run_training


@pytest.mark.slow  # trained_run: train.py, 2 ranks, 300 steps
def test_trainer_logs_task_metrics_equal_to_the_command(trained_run):
    final = [m for m in read_metrics(trained_run) if "eval_lambada_acc" in m]
    assert [m["step"] for m in final] == [300]
    final[0].update(next(m for m in read_metrics(trained_run) if "eval_wikitext2_token_ppl" in m))
    events = EventAccumulator(str(trained_run))
    events.Reload()
    (ppl,) = events.Scalars("eval/wikitext2_token_ppl")
    assert ppl.step == 300 and ppl.value == pytest.approx(final[0]["eval_wikitext2_token_ppl"])
    # The same numbers from the saved checkpoint, evaluated alone.
    model, tokenizer, _ = checkpoint.load_pretrained(trained_run, device="cpu")
    alone = evaluate.run_task(model, tokenizer, "lambada", limit=16, progress=False)
    assert final[0]["eval_lambada_examples"] == 16
    assert final[0]["eval_lambada_ppl"] == pytest.approx(alone["ppl"], rel=1e-4)


def test_unknown_or_fileless_tasks_are_refused():
    with pytest.raises(ConfigError, match="eval.tasks entry 'hellaswag'"):
        load_config("configs/tiny.yaml", ["eval.tasks=[hellaswag]"])
    with pytest.raises(ConfigError, match="choice needs its JSONL file"):
        load_config("configs/tiny.yaml", ["eval.tasks=[choice]"])
    assert load_config("configs/tiny.yaml", ["eval.tasks=[choice:x.jsonl]"]).eval.tasks == ["choice:x.jsonl"]


def test_every_task_has_its_bundled_default_file():
    assert set(evaluate.DEFAULT_FILES) == {"wikitext2", "lambada"}
    assert all(path.is_file() for path in evaluate.DEFAULT_FILES.values()), evaluate.DEFAULT_FILES


@pytest.mark.slow  # one trainer process
def test_a_missing_task_file_is_refused_before_any_compute(corpus, tmp_path):
    missing = tmp_path / "missing.jsonl"
    proc = run_training(tmp_path / "run", corpus, f"eval.tasks=[lambada,choice:{missing}]",
                        "train.max_steps=2", launcher="python", nproc=1, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"eval.tasks entry 'choice:{missing}': {missing} is no such file" in proc.stderr
    assert "ds_config: filled" not in proc.stderr  # no engine built, no step taken


@pytest.mark.slow  # one trainer process
def test_a_failing_final_evaluation_keeps_the_final_checkpoint(corpus, tmp_path):
    garbled = tmp_path / "garbled.jsonl"
    garbled.write_text("{not json\n")  # there, so preflight passes; unreadable at the evaluation
    run = tmp_path / "run"
    proc = run_training(run, corpus, f"eval.tasks=[choice:{garbled}]", "train.max_steps=3", "eval.interval=0",
                        "checkpoint.interval=0", "sample.max_new_tokens=0", launcher="python", nproc=1,
                        check=False)
    assert proc.returncode != 0
    assert f"{garbled}:1 is not JSON" in proc.stderr
    assert checkpoint.latest(run / "checkpoints").name == "step00000003"  # the steps are not lost
