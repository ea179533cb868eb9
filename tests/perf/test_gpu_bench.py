"""bench/gpu_train.py runs end to end (tiny shapes on this CPU), so it is ready for a GPU machine."""

import json
import subprocess
import sys

import pytest

from tests.train.conftest import ROOT

pytestmark = pytest.mark.slow


def test_gpu_bench_smoke_run_writes_both_parts(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, "bench/gpu_train.py", "--smoke", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    small, xl = result["results"]
    assert small["megagpt_tokens_per_s"] > 0 and small["reference_tokens_per_s"] > 0
    assert xl["zero_stage"] == 3 and xl["activation_checkpoint"] == 1 and xl["planned_gib"] > 0
    assert "megagpt" in proc.stdout and "reference" in proc.stdout
