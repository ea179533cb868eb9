"""Real text shared by the corpus tests: the sample pages' human-written main text and the eval sets."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAMBADA = ROOT / "data/eval/lambada/lambada_test.jsonl"
WIKITEXT = ROOT / "data/eval/wikitext-2-raw/wiki.test.raw"


@pytest.fixture(scope="session")
def articles() -> list[str]:
    """The 181 sample pages' main text from ground-truth.json (no extraction needed)."""
    truth = json.loads((ROOT / "data/sample/ground-truth.json").read_text())
    return [truth[k]["articleBody"] for k in sorted(truth)]


@pytest.fixture(scope="session")
def lambada() -> list[str]:
    return [json.loads(line)["text"] for line in LAMBADA.read_text().splitlines()]


@pytest.fixture(scope="session")
def wikitext() -> str:
    return WIKITEXT.read_text()


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def run_mpi(ranks: int, module: str, *args: str) -> subprocess.CompletedProcess:
    """`mpiexec -n RANKS python -m MODULE ARGS` with the venv's MPI launcher, as a user runs it."""
    bin_dir = os.path.dirname(sys.executable)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": bin_dir + os.pathsep + os.environ["PATH"]}
    result = subprocess.run([os.path.join(bin_dir, "mpiexec"), "-n", str(ranks), sys.executable, "-m", module,
                             *args], env=env, cwd=ROOT, timeout=600, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result
