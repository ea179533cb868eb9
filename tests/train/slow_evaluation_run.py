"""Run megagpt/train.py's main in this process with a clock that evaluation and saving push far ahead.

The trainer's clock (megagpt.train.time) advances one second at each reading; every evaluation and
every checkpoint save advances it by another 1,000 s. An honest tokens/s counts only the training
steps (one second each); one timed from log line to log line would include the 1,000 s.
Usage: python tests/train/slow_evaluation_run.py TRAIN_ARGS...
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

sys.path[0] = str(Path(__file__).resolve().parents[2])

from megagpt import train  # noqa: E402


class SteppingClock:
    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 1.0
        return self.now


def slowed(clock: SteppingClock, work):
    def run(*args, **kwargs):
        clock.now += 1000.0
        return work(*args, **kwargs)
    return run


if __name__ == "__main__":
    clock = SteppingClock()
    train.time = SimpleNamespace(perf_counter=clock.perf_counter)
    train.evaluate = slowed(clock, train.evaluate)
    train.Trainer.save = slowed(clock, train.Trainer.save)
    sys.exit(train.main(sys.argv[1:]))
