"""The trainer end to end: real DeepSpeed ZeRO-3 engines in real processes on a real corpus."""

from __future__ import annotations

import math
import shutil

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from megagpt import checkpoint
from megagpt.train import main
from tests.train.conftest import read_metrics, run_training

pytestmark = pytest.mark.slow


def test_two_rank_zero3_run_learns_and_logs_everything(corpus, tmp_path):
    run = tmp_path / "run"
    proc = run_training(run, corpus, "train.max_steps=60", "log.interval=10", "eval.interval=20")
    log = proc.stdout + proc.stderr
    assert "world 2 | dp 2 | pp 1 | tp 1 | zero 3" in log
    # On DeepSpeed's CPU accelerator on any host, a GPU host too (tests/train/conftest.py child_env):
    # fp32, torch's AdamW, and no peak FLOP/s to give an MFU (tests/gpu checks those on a GPU).
    layout = next(line for line in log.splitlines() if "layout: world" in line)
    assert layout.endswith("| cpu"), layout
    assert "ds_config: filled train_micro_batch_size_per_gpu=4" in log
    assert "optimizer.params.torch_adam=True (" in log and "bf16.enabled=False (" in log
    assert "sample: The" in log
    assert "GFLOP/s a device" in log  # achieved FLOP/s on every log line (MFU on a known GPU)

    metrics = read_metrics(run)
    train = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in train] == [10, 20, 30, 40, 50, 60]
    assert train[-1]["loss"] < train[0]["loss"] - 0.5  # learns, clearly, from about ln(512) = 6.24
    assert all(m["tokens_per_sec"] > 0 and math.isfinite(m["grad_norm"]) for m in train)
    evals = [m for m in metrics if "eval_loss" in m]
    assert [m["step"] for m in evals] == [20, 40, 60]
    assert evals[-1]["eval_ppl"] == pytest.approx(math.exp(evals[-1]["eval_loss"]))
    assert evals[-1]["eval_loss"] < min(evals[0]["eval_loss"], math.log(512) - 0.8)

    events = EventAccumulator(str(run))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_sec",
            "train/flops_per_sec_per_device", "eval/loss", "eval/ppl"} <= scalars
    assert "train/mfu" not in scalars  # a CPU has no peak to divide by
    assert [e.step for e in events.Scalars("train/loss")] == [10, 20, 30, 40, 50, 60]
    assert "samples/text_summary" in events.Tags()["tensors"]
    assert (run / "config.yaml").is_file()
    assert (run / "checkpoints" / "latest").read_text() == "step00000060"


def test_resume_continues_exactly_like_an_uninterrupted_run(corpus, tmp_path):
    straight = tmp_path / "straight"
    run_training(straight, corpus, "train.max_steps=8", "checkpoint.interval=4", "eval.interval=0")
    # A fresh pair of processes picks up the step-4 checkpoint of the same schedule.
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(straight / "checkpoints" / "step00000004", resumed / "checkpoints" / "step00000004")
    (resumed / "checkpoints" / "latest").write_text("step00000004")
    proc = run_training(resumed, corpus, "train.max_steps=8", "eval.interval=0")
    assert "resumed from" in proc.stdout + proc.stderr

    def by_step(run, key):
        return {m["step"]: m for m in read_metrics(run) if key in m}

    expected, got = by_step(straight, "loss"), by_step(resumed, "loss")
    assert sorted(got) == [5, 6, 7, 8]
    for step in (5, 6, 7, 8):
        assert got[step]["loss"] == pytest.approx(expected[step]["loss"], abs=1e-6), step
        assert got[step]["lr"] == pytest.approx(expected[step]["lr"], rel=1e-9)
    final_eval = by_step(straight, "eval_loss")[8]["eval_loss"]
    assert by_step(resumed, "eval_loss")[8]["eval_loss"] == pytest.approx(final_eval, abs=1e-6)


def test_torchrun_and_plain_python_launch_the_same_trainer(corpus, tmp_path):
    for launcher, nproc in (("torchrun", 2), ("python", 1)):
        run = tmp_path / launcher
        run_training(run, corpus, "train.max_steps=3", "sample.max_new_tokens=0",
                     launcher=launcher, nproc=nproc)
        assert [m["step"] for m in read_metrics(run) if "loss" in m] == [1, 2, 3]


def test_vocab_smaller_than_the_tokenizer_is_refused(corpus, tmp_path):
    proc = run_training(tmp_path / "run", corpus, "model.vocab_size=100", launcher="python",
                        check=False)
    assert proc.returncode == 2
    assert "model.vocab_size=100 is smaller than the tokenizer's 512" in proc.stderr


def test_config_errors_exit_2_before_starting(capsys):
    assert main(["--config", "configs/tiny.yaml", "train.max_stepz=3"]) == 2
    assert "did you mean train.max_steps" in capsys.readouterr().err


def test_async_save_writes_the_state_of_its_step_while_training_goes_on(corpus, tmp_path):
    run = tmp_path / "async"
    steps = ("train.max_steps=6", "eval.interval=0", "sample.max_new_tokens=0")
    proc = run_training(run, corpus, *steps, "checkpoint.interval=2", "checkpoint.async_save=true",
                        "checkpoint.keep_last=2")
    log = proc.stdout + proc.stderr
    assert "being written in the background" in log
    ckpt = run / "checkpoints"
    assert [p.name for p in checkpoint.published(ckpt)] == ["step00000004", "step00000006"]
    assert checkpoint.latest(ckpt).name == "step00000006" and not list(ckpt.glob("*.tmp"))
    for path in checkpoint.published(ckpt):
        checkpoint.verify(path)
    # One copy, each rank writing its half: fp32 weights and Adam's two moments, 12 bytes a parameter
    # plus DCP's framing of each piece (the previous format wrote 23 here, one rank 1.1 of them).
    weights = checkpoint.consolidated_state_dict(ckpt / "step00000006")
    n = sum(t.numel() for name, t in weights.items() if name != "lm_head.weight")
    sizes = [f.stat().st_size for f in sorted((ckpt / "step00000006").glob("*.distcp"))]
    print(f"\n{sum(sizes) / n:.2f} bytes a parameter, ranks {sizes}")
    assert len(sizes) == 2 and max(sizes) < 0.55 * sum(sizes)
    assert 12 * n < sum(sizes) < 15 * n  # 13.96 here (a tiny model: framing); 12.02 at 91M (bench)
    # Steps 5 and 6 ran while step 4's checkpoint was being written from its host copy: resumed from
    # it (a synchronous load), they come out as they did.
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(ckpt / "step00000004", resumed / "checkpoints" / "step00000004")
    (resumed / "checkpoints" / "latest").write_text("step00000004")
    run_training(resumed, corpus, *steps)
    expected = {m["step"]: m["loss"] for m in read_metrics(run) if "loss" in m}
    got = {m["step"]: m["loss"] for m in read_metrics(resumed) if "loss" in m}
    assert sorted(got) == [5, 6]
    for step in got:
        assert got[step] == pytest.approx(expected[step], abs=1e-6), step
