"""ZeRO-Offload and ZeRO-Infinity: the same losses as no offload, exact resume, and refusals
before any compute when this machine's memory or the offload folder is too small.

The model is just large enough that DeepSpeed really swaps: its optimizer sub-groups and its
matrices are above the 1 MiB below which it keeps a tensor in memory (checked: the offload
folder holds the bytes megagpt.sizing.host_memory predicts)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from megagpt.config import load_config
from megagpt.sizing.host_memory import offload_bytes
from megagpt.sizing.layout_rules import plan_layout
from megagpt.training.preflight import host_memory_bytes
from tests.train.conftest import read_metrics, run_training

pytestmark = pytest.mark.slow

# NVMe runs take 1-2 min alone and several times that on a loaded 2-core machine: no timeout in reach.
OFFLOAD_TIMEOUT = 1200
SWAPPING_MODEL = ("model.n_embd=512", "model.n_head=8", "model.dropout=0", "train.max_steps=6",
                  "eval.interval=0", "sample.max_new_tokens=0")


def losses(run) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in read_metrics(run) if "loss" in m}


def offload(optimizer: str, params: str, folder) -> tuple[str, ...]:
    return (f"parallel.offload_optimizer={optimizer}", f"parallel.offload_params={params}",
            f"parallel.offload_path={folder}")


def test_offload_to_cpu_and_nvme_gives_the_losses_of_no_offload(corpus, tmp_path):
    plain = tmp_path / "plain"
    run_training(plain, corpus, *SWAPPING_MODEL, nproc=1, timeout=OFFLOAD_TIMEOUT)
    expected = losses(plain)
    assert len(expected) == 6 and expected[6] < expected[1]
    for optimizer, params in (("cpu", "none"), ("nvme", "nvme")):
        run, folder = tmp_path / f"{optimizer}-{params}", tmp_path / f"offload-{optimizer}-{params}"
        proc = run_training(run, corpus, *SWAPPING_MODEL, *offload(optimizer, params, folder),
                            nproc=1, timeout=OFFLOAD_TIMEOUT)
        assert "optimizer.params.torch_adam=False" in proc.stdout + proc.stderr  # DeepSpeed's CPU Adam
        got = losses(run)
        # torch's AdamW (no offload) against DeepSpeed's CPU Adam: the same update, other rounding.
        assert got == pytest.approx(expected, rel=1e-5), (optimizer, params)
        if optimizer == "nvme":
            cfg = load_config("configs/tiny.yaml", [*SWAPPING_MODEL, *offload(optimizer, params, folder)])
            files = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            predicted = offload_bytes(cfg.model, plan_layout(cfg, 1), on_gpu=False).disk
            assert files == pytest.approx(predicted, rel=0.02)


def test_resume_with_optimizer_and_parameters_on_nvme_is_exact(corpus, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_training(straight, corpus, *SWAPPING_MODEL, *offload("nvme", "nvme", tmp_path / "o1"),
                 "checkpoint.interval=3", nproc=1, timeout=OFFLOAD_TIMEOUT)
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(straight / "checkpoints/step00000003", resumed / "checkpoints/step00000003")
    (resumed / "checkpoints/latest").write_text("step00000003")
    proc = run_training(resumed, corpus, *SWAPPING_MODEL, *offload("nvme", "nvme", tmp_path / "o2"),
                        nproc=1, timeout=OFFLOAD_TIMEOUT)
    assert "resumed from" in proc.stdout + proc.stderr
    expected, got = losses(straight), losses(resumed)
    assert sorted(got) == [4, 5, 6]
    for step in (4, 5, 6):
        assert got[step] == pytest.approx(expected[step], abs=1e-6), step


@pytest.fixture
def small_folder(tmp_path):
    """A real 1 MiB file system (tmpfs; the suite runs as root, as CI does)."""
    folder = tmp_path / "small"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], check=True)
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_an_offload_folder_too_small_is_refused_before_any_compute(corpus, tmp_path, small_folder):
    proc = run_training(tmp_path / "run", corpus, *SWAPPING_MODEL, *offload("nvme", "nvme", small_folder),
                        nproc=1, check=False, timeout=OFFLOAD_TIMEOUT)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"parallel.offload_path={small_folder} has 0.0 GB free and the offload needs" in log, log[-3000:]
    assert "point parallel.offload_path at a larger" in log
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_host_memory_too_small_for_the_offload_choice_is_refused_naming_what_fits(corpus, tmp_path):
    # GPT-2 XL's width, deep enough that its optimizer state in host memory (offload cpu) does not
    # fit this machine's available memory, while on NVMe it would.
    have = host_memory_bytes()
    layers = 48
    while True:
        args = [f"model.n_layer={layers}", "model.n_embd=1600", "model.n_head=25", "model.vocab_size=50257",
                *offload("cpu", "none", tmp_path / "o")]
        cfg = load_config("configs/tiny.yaml", args)
        if offload_bytes(cfg.model, plan_layout(cfg, 1), on_gpu=False).host > have:
            break
        layers *= 2
    proc = run_training(tmp_path / "run", corpus, *args, nproc=1, check=False, timeout=OFFLOAD_TIMEOUT)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "GiB of host memory on this node" in log and "GiB available" in log, log[-3000:]
    # What fits depends on the memory free when the child looks: the optimizer on NVMe, or (on a
    # machine busy enough) nothing on one rank; never the refused cpu choice.
    assert ("this fits: parallel.offload_optimizer=nvme" in log
            or "no offload choice fits one rank here: use more nodes" in log), log[-3000:]
