"""cluster/common.sh removes torch's build locks left by a killed build, and only those (no SLURM)."""

from __future__ import annotations

import os
import subprocess
import time

from tests.cluster.conftest import ROOT


def test_only_locks_in_idle_build_folders_are_removed(tmp_path):
    stale, live = tmp_path / "py311_cpu" / "fused_adam", tmp_path / "py311_cpu" / "deepspeed_shm_comm"
    for folder in (stale, live):
        folder.mkdir(parents=True)
        (folder / "lock").touch()
    (live / "fused_adam.o").touch()  # a build writing now
    old = time.time() - 3600
    for path in (stale / "lock", stale, live / "lock"):
        os.utime(path, (old, old))
    script = f'source cluster/common.sh && remove_stale_build_locks "{tmp_path}" 600'
    proc = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert not (stale / "lock").exists() and (live / "lock").exists()
    assert f"removing the stale build lock {stale / 'lock'}" in proc.stdout
