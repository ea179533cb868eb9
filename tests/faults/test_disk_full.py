"""A checkpoint save that fills its disk: the run says which folder is full and how much the save
needs, removes the partial folder, keeps `latest` on the last good checkpoint and exits cleanly."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.train.conftest import run_training

pytestmark = pytest.mark.slow

# configs/tiny.yaml's checkpoint is about 1.7 MB (135k parameters at 12 bytes, and the tokenizer):
# room for one, not two (keep_last=0 keeps the first).
ROOM = "2600k"


@pytest.fixture
def small_disk(tmp_path):
    """A real small file system (tmpfs; the suite runs as root, as CI does)."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={ROOM}", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def shm_buffers() -> set[Path]:
    return set(Path("/dev/shm").glob("deepspeed_allreduce_buffer_*"))


def test_a_full_checkpoint_disk_is_named_and_latest_stays(corpus, tmp_path, small_disk):
    before = shm_buffers()
    proc = run_training(tmp_path / "run", corpus, "train.max_steps=4", "checkpoint.interval=2",
                        "checkpoint.keep_last=0", f"checkpoint.dir={small_disk}", "eval.interval=0",
                        "sample.max_new_tokens=0", nproc=1, check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 2, log[-4000:]
    expected = f"checkpoint step00000004 not saved: no space left in checkpoint.dir {small_disk}: "
    assert expected in log, log[-4000:]
    assert "free, and the save needs about" in log and "(the size of step00000002)" in log
    assert "its partial step00000004.tmp was removed and `latest` still names step00000002" in log
    assert "Traceback" not in log
    assert sorted(p.name for p in small_disk.iterdir()) == ["latest", "step00000002"]
    assert (small_disk / "latest").read_text() == "step00000002"
    assert shm_buffers() <= before, "the rank's DeepSpeed shared-memory buffer is left in /dev/shm"
