"""The check of `python -m bench.gpu_train`: every part in a process of its own, within its budget;
a part that fails, runs out of memory or out of time is recorded as such and the others still run."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import deepspeed
import torch
from deepspeed.accelerator import get_accelerator

from bench import harness
from bench.gpu.measure import BUDGETS, LOGS, SIZES
from bench.gpu.report import header, summarize
from bench.harness import ROOT
from megagpt.sizing.flops import accelerator_name, device_peak_flops
from megagpt.training.engine import on_cpu


def run_process(command: list[str], budget: float, log_path: Path) -> tuple[int | None, float]:
    """Run `command` in its own process group, output to `log_path`; (exit code, or None when the
    budget ran out and the group was killed; seconds)."""
    start = time.monotonic()
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True)  # torch.compile's workers die with it
        try:
            code = proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
    return code, time.monotonic() - start


def last_lines(path: Path, count: int) -> list[str]:
    return [line for line in path.read_text(errors="replace").splitlines() if line.strip()][-count:]


def gpu_tests(args: argparse.Namespace, budget: float) -> dict:
    """The GPU tests; under --smoke only collected (they train real models: a smoke run inside the
    test suite must not run them again)."""
    tests = ROOT / "tests/gpu"
    if not tests.is_dir():
        return {"status": "absent", "seconds": 0.0,
                "summary": "tests/gpu is not in this checkout (the GPU tests are added with it)"}
    log_path = LOGS / "tests.log"
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/gpu", "-q"]
    code, seconds = run_process(command + (["--collect-only"] if args.smoke else []), budget, log_path)
    summary = (last_lines(log_path, 1) or ["no output"])[0].strip("= ")
    status = {None: "timeout", 0: "collected" if args.smoke else "passed", 5: "no tests"}.get(code, "failed")
    return {"status": status, "seconds": seconds, "summary": summary, "log": str(log_path.relative_to(ROOT))}


def bench_part(name: str, args: argparse.Namespace, budget: float) -> dict:
    figures, log_path = LOGS / f"{name}.json", LOGS / f"{name}.log"
    figures.unlink(missing_ok=True)
    sizes = [a for key in SIZES for a in (f"--{key.replace('_', '-')}", str(getattr(args, key)))]
    command = [sys.executable, "-m", "bench.gpu_train", "--run-part", name, "--part-out", str(figures),
               *(["--smoke"] if args.smoke else []), *sizes]
    code, seconds = run_process(command, budget, log_path)
    result = {"status": {None: "timeout", 0: "ok"}.get(code, "failed"), "seconds": seconds,
              "log": str(log_path.relative_to(ROOT))}
    if code != 0:
        result["error"] = last_lines(log_path, 12)
    if figures.exists():  # what it measured before it stopped, if it stopped
        result["figures"] = json.loads(figures.read_text())
    return result


def prepare_fused_adam() -> dict:
    """Build (or load from the cache) DeepSpeed's fused Adam, which the engine uses on a GPU, so
    that no part's budget pays for a first-time JIT build."""
    if on_cpu():
        return {"status": "skipped", "summary": "CPU: the engine uses torch's AdamW"}
    start = time.monotonic()
    try:
        get_accelerator().create_op_builder("FusedAdamBuilder").load(verbose=False)
    except Exception as err:  # recorded; the engine's parts then fail with the same cause
        return {"status": "failed", "seconds": time.monotonic() - start, "error": [repr(err)]}
    return {"status": "ok", "seconds": time.monotonic() - start}


def run_parts(args: argparse.Namespace) -> tuple[dict, float]:
    """Each part's result (status, seconds, figures), and the seconds they took together."""
    parts = {}
    start = time.monotonic()  # the budget is the parts': a first fused Adam build is reported apart
    for name in args.parts:
        left = args.budget - (time.monotonic() - start)
        budget = min(BUDGETS[name], left)
        if budget < 10:
            result = {"status": "skipped", "summary": f"the run's --budget {args.budget:.0f} s was spent"}
        else:
            print(f"gpu-check: {name} (budget {budget:.0f} s) ...", flush=True)
            result = gpu_tests(args, budget) if name == "tests" else bench_part(name, args, budget)
            print(f"gpu-check: {name} {result['status']} in {result['seconds']:.0f} s", flush=True)
        parts[name] = {"budget_s": budget, **result}
    return parts, time.monotonic() - start


def check(args: argparse.Namespace, question: str) -> int:
    """Every part of `args.parts`; prints the table, writes the result; 1 when a part failed."""
    LOGS.mkdir(parents=True, exist_ok=True)
    device = accelerator_name()
    settings = {"device": device, "cuda": torch.version.cuda, "smoke": args.smoke, "budget_s": args.budget,
                "parts": args.parts, "sizes": {key: getattr(args, key) for key in SIZES}}
    figures = {"peak_flops": device_peak_flops(device), "prepare_fused_adam": prepare_fused_adam()}
    figures["parts"], figures["elapsed_s"] = run_parts(args)
    result = summarize(question, settings, figures)
    print(header(settings, figures, f"torch {torch.__version__}, DeepSpeed {deepspeed.__version__}"))
    label = re.sub(r"[^A-Za-z0-9.-]+", "_", device) + ("-smoke" if args.smoke else "")
    harness.report("gpu_train", result, args.json, label=label)
    print(f"total {figures['elapsed_s']:.0f} s of {args.budget:.0f} s; each part's output in "
          f"{LOGS.relative_to(ROOT)}/<part>.log")
    return 0 if result.goal.met else 1
