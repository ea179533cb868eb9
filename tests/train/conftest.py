"""A tiny real corpus built from bundled pages, and a way to run the trainer under a real launcher."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.build import build

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """Shards of 30 real web pages with a 512-token BPE, plus its valid/ split."""
    pages = sorted((ROOT / "data/sample/html").glob("*.html.gz"))[:30]
    out = tmp_path_factory.mktemp("corpus") / "shards"
    build(pages, out, vocab_size=512, valid_fraction=0.1, min_chars=200, seed=0)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_training(run_dir: Path, corpus: Path, *overrides: str, nproc: int = 2,
                 launcher: str = "deepspeed", timeout: int = 300, check: bool = True
                 ) -> subprocess.CompletedProcess:
    """Run megagpt/train.py with configs/tiny.yaml on the corpus, as a user would launch it."""
    args = ["--config", "configs/tiny.yaml", f"data.path={corpus}", f"data.valid_path={corpus}/valid",
            f"log.dir={run_dir}", *overrides]
    port = str(free_port())
    launchers = {
        "deepspeed": ["deepspeed", "--num_gpus", str(nproc), "--master_port", port],
        "torchrun": ["torchrun", "--nproc_per_node", str(nproc), "--master_port", port],
        # MPICH's mpiexec sets only PMI_*; megagpt.parallel.launcher picks the address and a free port.
        "mpirun": ["mpiexec", "-n", str(nproc), sys.executable],
        "python": [sys.executable],
    }
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", PYTHONUNBUFFERED="1")
    proc = subprocess.run([*launchers[launcher], "megagpt/train.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
