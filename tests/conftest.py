"""Session fixtures shared by capabilities: a tiny real corpus, and a model really trained on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.build import build
from tests.train.conftest import ROOT, run_training


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """Shards of 30 real web pages with a 512-token BPE, plus its valid/ split."""
    pages = sorted((ROOT / "data/sample/html").glob("*.html.gz"))[:30]
    out = tmp_path_factory.mktemp("corpus") / "shards"
    build(pages, out, vocab_size=512, valid_fraction=0.1, min_chars=200, seed=0)
    return out


@pytest.fixture(scope="session")
def trained_run(corpus, tmp_path_factory) -> Path:
    """The run folder of configs/tiny.yaml trained for 300 steps by 2 DeepSpeed ZeRO-3 ranks: its
    checkpoint is sharded in two, as real multi-rank checkpoints are. At the end the trainer also
    runs two evaluation tasks on small subsets (eval.tasks)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    run_training(run, corpus, "train.max_steps=300", "train.warmup_steps=20", "log.interval=50",
                 "eval.interval=0", "sample.max_new_tokens=0", "eval.tasks=[lambada,wikitext2]",
                 "eval.task_limit=16")
    return run
