"""python -m bench.gpu_train (./launch.sh gpu-check) runs every part end to end at toy shapes on this CPU, so
it is ready for a GPU machine; a part that fails or outruns its budget is recorded, not fatal."""

import json
import os
import subprocess
import sys

import pytest

from bench.gpu.measure import Figures
from tests.train.conftest import ROOT


def gpu_check(tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    """A --smoke run on DeepSpeed's CPU accelerator, a GPU host's included (its figures are checked
    as a CPU's: fp32, no peak memory)."""
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_train", "--smoke", "--json", str(out), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "DS_ACCELERATOR": "cpu"})
    return proc, json.loads(out.read_text())["figures"]  # the bench harness's record: figures.parts


@pytest.mark.slow
def test_smoke_runs_every_part(tmp_path):
    proc, result = gpu_check(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    parts = result["parts"]
    assert list(parts) == ["tests", "small", "precision", "xl", "loss"]
    assert parts["tests"]["status"] in ("collected", "absent", "no tests"), parts["tests"]  # not run
    for name in ("small", "precision", "xl", "loss"):
        assert parts[name]["status"] == "ok", parts[name]

    small = parts["small"]["figures"]
    assert small["megagpt"]["tokens_per_s"] > 0 and small["reference"]["tokens_per_s"] > 0
    assert small["megagpt"]["zero_stage"] == 1
    assert small["megagpt_as_configured"]["zero_stage"] == 3  # zero_stage auto on one process
    assert small["flash_attention"] is None  # CPU: not checked

    precision = parts["precision"]["figures"]
    # No bf16 on the CPU: build_engine's fp32 run and the fp32 engine's pieces train alike.
    assert precision["runs"] == ["fp32 (auto)", "fp32"]
    assert len(precision["fp32 losses"]) == precision["steps"]
    assert precision["max_relative_difference"] < 1e-5

    xl = parts["xl"]["figures"]
    assert "zero3" in xl["layout"] and "ac=1" in xl["layout"] and xl["planned_gib"] > 0
    assert "peak_allocated_gib" not in xl  # GPU only

    loss = parts["loss"]["figures"]
    assert loss["loss_difference"] < 1e-4 and loss["grad_relative_difference"] < 1e-4
    assert loss["chunked"]["peak_gib"] is None  # GPU only

    table = proc.stdout[proc.stdout.index("gpu-check on"):]
    for name in parts:
        assert f"\n{name}" in table
    assert "bf16 not run (CPU)" in table and "peak not measured (CPU)" in table


@pytest.mark.slow
def test_a_failing_part_does_not_stop_the_others(tmp_path):
    proc, result = gpu_check(tmp_path, "--parts", "xl,loss", "--xl-micro-batch", "0")
    assert proc.returncode == 1
    xl, loss = result["parts"]["xl"], result["parts"]["loss"]
    assert xl["status"] == "failed" and "micro_batch_size must be positive" in "\n".join(xl["error"])
    assert loss["status"] == "ok"
    assert "failed" in proc.stdout


@pytest.mark.slow
def test_a_part_past_the_budget_is_stopped_and_the_rest_skipped(tmp_path):
    # 100,000 steps take far longer than the 15 s the whole run gets
    proc, result = gpu_check(tmp_path, "--parts", "small,loss", "--steps", "100000", "--budget", "15")
    assert proc.returncode == 1
    small, loss = result["parts"]["small"], result["parts"]["loss"]
    assert small["status"] == "timeout" and 15 <= small["seconds"] < 40
    assert loss["status"] == "skipped"


def test_a_failed_measurement_is_recorded_and_the_part_goes_on(tmp_path):
    figures = Figures(tmp_path / "part.json")
    with figures.measuring("plain"):
        raise RuntimeError("CUDA out of memory")
    with figures.measuring("chunked"):
        figures.add(chunked={"peak_gib": 0.5})
    assert figures.failed == ["plain"]
    assert json.loads((tmp_path / "part.json").read_text()) == {
        "plain": {"error": "RuntimeError('CUDA out of memory')"}, "chunked": {"peak_gib": 0.5}}
