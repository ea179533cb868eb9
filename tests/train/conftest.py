"""A way to run the trainer under a real launcher (the corpus fixture is in tests/conftest.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(accelerator: str = "cpu") -> dict[str, str]:
    """The environment of a process a test starts: the venv's bin first on PATH (its ninja, or
    DeepSpeed's JIT ops rebuild: shared/PITFALLS.md), unbuffered output, and DeepSpeed's accelerator
    named (DS_ACCELERATOR). "cpu" for the suite on any host: on a GPU host a launcher's 2-4 ranks
    would otherwise each claim the GPU. The GPU tests (tests/gpu) pass "cuda"."""
    return dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", PYTHONUNBUFFERED="1",
                DS_ACCELERATOR=accelerator)


def training_command(run_dir: Path, corpus: Path, *overrides: str, nproc: int = 2,
                     launcher: str = "deepspeed", accelerator: str = "cpu"
                     ) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that start megagpt/train.py with configs/tiny.yaml."""
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
    return [*launchers[launcher], "megagpt/train.py", *args], child_env(accelerator)


def run_training(run_dir: Path, corpus: Path, *overrides: str, nproc: int = 2,
                 launcher: str = "deepspeed", timeout: int = 300, check: bool = True,
                 accelerator: str = "cpu") -> subprocess.CompletedProcess:
    """Run megagpt/train.py with configs/tiny.yaml on the corpus, as a user would launch it, on
    DeepSpeed's `accelerator` ("cpu", or "cuda" for the GPU tests)."""
    cmd, env = training_command(run_dir, corpus, *overrides, nproc=nproc, launcher=launcher,
                                accelerator=accelerator)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
