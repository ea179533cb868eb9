"""Run a command and measure it: wall time, CPU time and each process's peak resident memory.

Peak RSS is sampled (every 50 ms) for the command and all its descendants, by process, so an MPI
job reports each rank's peak. Used by the corpus benchmarks; not a benchmark itself (`python -m bench`
skips modules whose name starts with an underscore).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import psutil


def run_measured(command: Sequence[str], env: dict[str, str], cwd: Path,
                 match: str = "pipelines.") -> dict:
    """Run `command`; return seconds, cpu_seconds and peak_rss_mib of each process whose command
    line contains `match` (the ranks, not the launcher), or raise with its output on failure."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    peak: dict[int, int] = {}
    cpu: dict[int, float] = {}
    root = psutil.Process(process.pid)
    while process.poll() is None:
        try:
            family = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for p in family:
            try:
                if p.name().startswith("python") and match in " ".join(p.cmdline()):  # not the launcher
                    peak[p.pid] = max(peak.get(p.pid, 0), p.memory_info().rss)
                    times = p.cpu_times()
                    cpu[p.pid] = times.user + times.system
            except psutil.Error:
                pass
        time.sleep(0.05)
    output = process.communicate()[0]
    seconds = time.perf_counter() - start
    if process.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{output[-3000:]}")
    return {"seconds": seconds, "cpu_seconds": sum(cpu.values()),
            "peak_rss_mib": [round(v / 2**20, 1) for _, v in sorted(peak.items())]}


def measure_child(command: Sequence[str], env: dict[str, str] | None = None) -> dict:
    """Wall and CPU seconds and peak resident memory of one child process (from the kernel's
    accounting at its exit: no sampling), or raise with the end of its stderr on failure."""
    start = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {child.stderr.read().decode()[-2000:]}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mib": usage.ru_maxrss / 1024}
