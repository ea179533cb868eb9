"""A checkpoint saved under one layout resumes under another with the continuation of not changing.

The step-4 checkpoints of the layout runs are resumed under other layouts (tp2 x pp2 ZeRO-3 -> one
process; dp2 ZeRO-3 -> pp2 ZeRO-1; tp2 x dp2 ZeRO-3, each rank a ZeRO range of its tp slice -> tp2
alone; pp2 x dp2 ZeRO-3, each rank a ZeRO range of its stage -> dp2 ZeRO-3 and back); steps 5-8 must
equal the uninterrupted run's.
"""

from __future__ import annotations

import shutil

import pytest

from megagpt.checkpoint import consolidated_state_dict
from tests.parallel.conftest import COMMON, LAYOUTS, STEPS, losses
from tests.train.conftest import run_training

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("saved, resumed", [("pp2_tp2_zero3", "one_process"), ("dp2_zero3", "pp2_zero1"),
                                            ("tp2_dp2_zero3", "tp2"), ("pp2_dp2_zero3", "dp2_zero3"),
                                            ("dp2_zero3", "pp2_dp2_zero3")])
def test_resume_under_another_layout(saved, resumed, layout_runs, tmp_path):
    source = layout_runs[saved]
    run = tmp_path / "resumed"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copytree(source / "checkpoints" / "step00000004", run / "checkpoints" / "step00000004")
    (run / "checkpoints" / "latest").write_text("step00000004")
    launcher, nproc, overrides = LAYOUTS[resumed]
    proc = run_training(run, layout_runs.corpus, *COMMON, *overrides, launcher=launcher, nproc=nproc)
    assert "resuming under another layout" in proc.stdout + proc.stderr

    expected, got = losses(source), losses(run)
    assert sorted(got) == [5, 6, 7, 8]
    loss_diff = max(abs(got[s]["loss"] - expected[s]["loss"]) for s in got)
    for step in got:
        assert got[step]["lr"] == pytest.approx(expected[step]["lr"], rel=1e-9)
    final = f"checkpoints/step{STEPS:08d}"
    want, have = consolidated_state_dict(source / final), consolidated_state_dict(run / final)
    weight_diff = max((have[k] - want[k]).abs().max().item() for k in want)
    print(f"\n{saved} -> {resumed}: max |loss diff| {loss_diff:.1e}, |weight diff| {weight_diff:.1e}")
    assert loss_diff < 1e-5, (expected, got)
    assert weight_diff < 1e-4
