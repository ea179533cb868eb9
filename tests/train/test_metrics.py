"""metrics.jsonl is strict JSON: a value that is not finite is null there (and NaN in TensorBoard)."""

from __future__ import annotations

import json
import math

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from megagpt.training.metrics import MetricsWriter


def strict(line: str) -> dict:
    def refuse(word: str) -> None:
        raise ValueError(f"not JSON: {word}")

    return json.loads(line, parse_constant=refuse)


def test_non_finite_values_are_null_in_the_jsonl_and_nan_in_tensorboard(tmp_path):
    writer = MetricsWriter(tmp_path, enabled=True)
    writer.log(1, "train", {"loss": 2.5, "grad_norm": 1.0, "nonfinite": 0})
    writer.log(2, "train", {"loss": math.nan, "grad_norm": math.inf, "nonfinite": 1})
    writer.log(2, "eval", {"loss": -math.inf})
    writer.close()
    lines = [strict(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"step": 1, "loss": 2.5, "grad_norm": 1.0, "nonfinite": 0},
                     {"step": 2, "loss": None, "grad_norm": None, "nonfinite": 1},
                     {"step": 2, "eval_loss": None}]
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([2.5, math.nan], nan_ok=True)
