"""The shell of cluster/ and launch.sh is shellcheck clean (following common.sh where sourced)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.cluster.conftest import ROOT


def test_shellcheck_clean():
    shellcheck = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or "shellcheck"
    scripts = ["launch.sh", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "cluster").iterdir())]
    proc = subprocess.run([shellcheck, "-x", *scripts], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
