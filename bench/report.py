"""Writing a benchmark's results: its JSON, with the facts of the machine it ran on."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any


def save_results(path: str | Path, results: dict[str, Any]) -> None:
    """Write `results` plus the machine (Python, CPUs, load after the run) to `path` as JSON."""
    machine = {"python": platform.python_version(), "cpus": os.cpu_count(),
               "load_average_after": os.getloadavg()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({**results, "machine": machine}, indent=2) + "\n")
    print(f"wrote {path}")
