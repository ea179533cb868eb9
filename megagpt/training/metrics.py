"""Where a run's numbers go: `metrics.jsonl` and TensorBoard, written by rank 0 only.

JSON has no NaN or infinity (Python's json would write the bare word NaN, which strict readers
refuse): a value that is not finite, e.g. the loss of an interval whose steps were all skipped, is
null in metrics.jsonl, and stays NaN in TensorBoard."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter


class MetricsWriter:
    """One JSON object per logged step in metrics.jsonl, the same values as TensorBoard scalars."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.enabled = enabled
        if enabled:
            run_dir.mkdir(parents=True, exist_ok=True)
            self.jsonl = (run_dir / "metrics.jsonl").open("a")
            self.tb = SummaryWriter(log_dir=str(run_dir))

    def log(self, step: int, prefix: str, values: dict[str, float]) -> None:
        """`values` go to TensorBoard as `prefix/name`, and to the jsonl as `name` (train) or
        `prefix_name` (eval), e.g. eval_loss."""
        if not self.enabled:
            return
        record: dict[str, Any] = {"step": step}
        for name, value in values.items():
            self.tb.add_scalar(f"{prefix}/{name}", value, step)
            key = name if prefix == "train" else f"{prefix}_{name}"
            record[key] = value if math.isfinite(value) else None
        self.jsonl.write(json.dumps(record, allow_nan=False) + "\n")
        self.jsonl.flush()

    def per_rank(self, step: int, tag: str, values: list[float]) -> None:
        """One TensorBoard scalar a rank (`tag/rank_00003`); the jsonl keeps what the log line says."""
        if self.enabled:
            for rank, value in enumerate(values):
                self.tb.add_scalar(f"{tag}/rank_{rank:05d}", value, step)

    def text(self, step: int, tag: str, text: str) -> None:
        if self.enabled:
            self.tb.add_text(tag, text, step)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.tb.close()
