"""Runs of train.py under each layout, made once per test session and shared by the tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.train.conftest import read_metrics, run_training

STEPS = 8
# Vocabulary 512 padded to 768: under tp=2 the second rank's slice (ids 384-767) is part padding.
COMMON = (f"train.max_steps={STEPS}", "train.warmup_steps=2", "log.interval=1", "eval.interval=0",
          "sample.max_new_tokens=0", "checkpoint.interval=4", "model.vocab_pad_multiple=384")

# name: (launcher, processes, overrides). micro x accum x dp = 8 sequences per step in every layout,
# so every layout sees the same data in the same global batches. The 2-process runs use each launcher.
LAYOUTS = {
    "one_process": ("python", 1, ["train.micro_batch_size=8"]),
    "dp2_zero3": ("mpirun", 2, ["train.micro_batch_size=4", "parallel.zero_stage=3"]),
    "tp2": ("torchrun", 2, ["train.micro_batch_size=8", "parallel.tp=2"]),
    "tp2_dp2_zero3": ("deepspeed", 4, ["train.micro_batch_size=4", "parallel.tp=2", "parallel.zero_stage=3"]),
    # pp > 1: megagpt's 1F1B schedule over one DeepSpeed engine a stage (megagpt.parallel.stage_pipeline)
    "pp2_zero1": ("deepspeed", 2, ["train.micro_batch_size=4", "train.grad_accum=2", "parallel.pp=2",
                                   "parallel.zero_stage=1"]),
    "pp2_tp2_zero3": ("deepspeed", 4, ["train.micro_batch_size=4", "train.grad_accum=2", "parallel.pp=2",
                                       "parallel.tp=2", "parallel.zero_stage=3"]),
    "pp2_dp2_zero3": ("deepspeed", 4, ["train.micro_batch_size=2", "train.grad_accum=2", "parallel.pp=2",
                                       "parallel.zero_stage=3"]),
    "dp2_zero3_checkpointed": ("deepspeed", 2, ["train.micro_batch_size=4", "parallel.zero_stage=3",
                                                "parallel.activation_checkpoint=1"]),
    # ... and recomputes activations in the backward (equal losses: dropout is 0).
    "pp2_dp2_zero1_checkpointed": ("deepspeed", 4, ["train.micro_batch_size=2", "train.grad_accum=2",
                                                    "parallel.pp=2", "parallel.zero_stage=1",
                                                    "parallel.activation_checkpoint=1"]),
    # pp2 x tp2 x dp2 ZeRO-3 (8 processes) also equals one process (NOTES-zpp.md) but takes ~100 s
    # on 2 cores: left out of CI.
}


# GPT-3's alternating dense and banded attention; the window is a quarter of tiny.yaml's 32 positions.
SPARSE = ("model.attention=gpt3_sparse", "model.local_window=8")


class LayoutRuns:
    """Each layout's run directory, trained on first request; `overrides` apply to every layout."""

    def __init__(self, shards: Path, root: Path, *overrides: str):
        self.corpus, self.root, self.overrides = shards, root, overrides
        self.runs: dict[str, Path] = {}
        self.logs: dict[str, str] = {}

    def __getitem__(self, name: str) -> Path:
        if name not in self.runs:
            launcher, nproc, overrides = LAYOUTS[name]
            run = self.root / name
            proc = run_training(run, self.corpus, *COMMON, *self.overrides, *overrides, launcher=launcher,
                                nproc=nproc)
            self.runs[name], self.logs[name] = run, proc.stdout + proc.stderr
        return self.runs[name]


@pytest.fixture(scope="session")
def layout_runs(corpus, tmp_path_factory) -> LayoutRuns:  # noqa: F811
    return LayoutRuns(corpus, tmp_path_factory.mktemp("layouts"))


@pytest.fixture(scope="session")
def sparse_layout_runs(corpus, tmp_path_factory) -> LayoutRuns:  # noqa: F811
    return LayoutRuns(corpus, tmp_path_factory.mktemp("sparse_layouts"), *SPARSE)


def losses(run: Path) -> dict[int, dict]:
    """metrics.jsonl's training records by step."""
    return {m["step"]: m for m in read_metrics(run) if "loss" in m}
