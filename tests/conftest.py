"""Session fixtures shared by capabilities: a tiny real corpus, and a model really trained on it.

The suite runs on DeepSpeed's CPU accelerator on any host, a GPU host included: its figures (fp32
losses equal to 1e-6 across layouts and resumes, FLOP/s without a peak) are the CPU's, and its 2-4
rank runs would otherwise each claim the GPU. DS_ACCELERATOR is set here, before anything imports
deepspeed (which picks its accelerator once, at import), and the processes the tests start inherit
it (tests/train/conftest.py child_env says so explicitly). The GPU tests (tests/gpu, marker `gpu`)
start their processes with DS_ACCELERATOR=cuda.
"""

from __future__ import annotations

import os
import shutil
import subprocess

os.environ["DS_ACCELERATOR"] = "cpu"  # forced, not defaulted: a shell's DS_ACCELERATOR=cuda included

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from pipelines.build import build  # noqa: E402
from tests.train.conftest import ROOT, run_training  # noqa: E402


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
                 # about 40 s alone: the limit is for a busy machine, whose slowdown is no failure
                 "eval.task_limit=16", timeout=900)
    return run


# Session fixtures that start train.py (2 ranks, 300 steps for trained_run): a test using one is
# slow, out of the quick tier (-m "not slow"). Collection stops on a test that uses one unmarked.
TRAINING_FIXTURES = {"trained_run", "novel_model", "layout_runs", "sparse_layout_runs", "short_run"}


def pytest_collection_modifyitems(config, items):
    unmarked = [f"{item.nodeid} (uses {', '.join(sorted(TRAINING_FIXTURES & set(item.fixturenames)))})"
                for item in items
                if TRAINING_FIXTURES & set(item.fixturenames) and item.get_closest_marker("slow") is None]
    if unmarked:
        raise pytest.UsageError("these tests train a model through a session fixture but are not marked "
                                "slow, so they would slow the quick tier: mark them @pytest.mark.slow\n  "
                                + "\n  ".join(unmarked))


SHM = Path("/dev/shm")


@pytest.fixture(autouse=True)
def remove_deepspeed_shm_buffers():
    """DeepSpeed's shared-memory comm op leaves a 66 MiB /dev/shm/deepspeed_allreduce_buffer_* file
    for each rank of every run and never removes it; /dev/shm is memory, and the full suite's runs
    filled it (with other sessions' runs on the machine, 22 GiB: the OOM killer ended the suite).
    After each test, those that appeared during it and that no process holds are removed."""
    before = set(SHM.glob("deepspeed_allreduce_buffer_*"))
    yield
    if shutil.which("fuser") is None:
        return
    for path in set(SHM.glob("deepspeed_allreduce_buffer_*")) - before:
        if subprocess.run(["fuser", "-s", str(path)]).returncode != 0:  # no process holds it
            path.unlink(missing_ok=True)
