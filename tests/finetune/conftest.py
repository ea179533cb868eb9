"""A model pre-trained on novels, and the word-order task it is fine-tuned on."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.build import build
from tests.finetune.tasks import shuffled_or_not, write_jsonl, write_passages
from tests.train.conftest import run_training


@pytest.fixture(scope="session")
def novel_model(tmp_path_factory) -> Path:
    """The run folder of a 4 x 128 GPT-2 pre-trained by 2 DeepSpeed ZeRO-3 ranks for 600 steps on
    novels (LAMBADA passages 0-3999, a 1,024-piece BPE): about 2 minutes; eval loss about 3.9."""
    root = tmp_path_factory.mktemp("novels")
    shards = root / "shards"
    build([write_passages(root / "novels.jsonl", 0, 4000)], shards, vocab_size=1024,
          valid_fraction=0.05, seed=0)
    run = root / "run"
    run_training(run, shards, "model.n_layer=4", "model.n_head=4", "model.n_embd=128",
                 "model.vocab_size=1024", "model.block_size=64", "train.micro_batch_size=16",
                 "train.max_steps=600", "train.warmup_steps=30", "log.interval=100",
                 "eval.interval=0", "sample.max_new_tokens=0",
                 timeout=900)  # 2 minutes alone; a busy machine's slowdown is no failure
    return run


@pytest.fixture(scope="session")
def word_order_task(tmp_path_factory) -> tuple[Path, Path]:
    """Is a 16-word excerpt in its real order or shuffled? 2,000 training examples from the
    pre-training passages (the labels are new), 500 held out from passages it never saw."""
    root = tmp_path_factory.mktemp("word_order")
    return (write_jsonl(root / "train.jsonl", shuffled_or_not(0, 2000, seed=0, words=16)),
            write_jsonl(root / "valid.jsonl", shuffled_or_not(4000, 4500, seed=1, words=16)))
