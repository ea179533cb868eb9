"""parallel.compile: the trainer's model through torch.compile (DeepSpeed's engine.compile)
computes what the eager model computes."""

from __future__ import annotations

import pytest

from tests.train.conftest import read_metrics, run_training

pytestmark = pytest.mark.slow


def test_compiled_training_equals_eager(corpus, tmp_path):
    common = ("train.max_steps=4", "log.interval=1", "eval.interval=0", "sample.max_new_tokens=0",
              "parallel.zero_stage=2")
    losses = {}
    for compiled in (False, True):
        run = tmp_path / str(compiled)
        proc = run_training(run, corpus, *common, f"parallel.compile={str(compiled).lower()}",
                            launcher="python", nproc=1)
        assert ("compiling the model with torch.compile" in proc.stderr + proc.stdout) == compiled
        losses[compiled] = [m["loss"] for m in read_metrics(run) if "loss" in m]
    assert len(losses[True]) == 4
    assert losses[True] == pytest.approx(losses[False], abs=1e-5)
