"""How do GPT-3's banded attention layer's time and memory compare with dense causal attention?

    python -m bench.sparse_attention [--contexts 1024 2048 4096] [--window 256] [--device cuda]

One attention call of GPT-2 small's shape (12 heads of 64, batch 1) at each context length, timed
forward + backward for: `dense` (SDPA, causal: megagpt's dense layers), `banded` (what
megagpt.model.attention.banded_attention runs on this device: the blocked kernel on a CPU,
FlexAttention on a GPU) and `masked_sdpa` (one SDPA call with a full T x T banded mask, the
obvious alternative); on a GPU also `blocked` (the kernel training with attention dropout uses
there). The machine may be shared, so the kernels run alternately, repeat after repeat, and the
median of each is compared: ratios are measured side by side. Peak memory is what one forward +
backward adds: the accelerator's allocator peak on a GPU; on a CPU the peak resident memory of a
fresh process (python -m bench.sparse_attention --memory-child) running it once (the allocator
there keeps no statistics). Saved memory is what the forward keeps for backward, which a layer
holds through a training step. Writes JSON to bench/results/sparse_attention-DATE[-DEVICE].json
and prints a table.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench import harness
from bench.harness import ROOT
from megagpt.model.attention import banded_attention, banded_mask, blocked_banded_attention

HEADS, HEAD_SIZE, BATCH = 12, 64, 1  # GPT-2 small's attention


def kernels(window: int, device: str) -> dict[str, Callable[..., torch.Tensor]]:
    masks: dict[int, torch.Tensor] = {}

    def masked_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        T = q.size(-2)
        if T not in masks:  # built once, outside the timing, as a model would keep it
            masks[T] = banded_mask(T, T, window, q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=masks[T])

    found = {
        "dense": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        "banded": lambda q, k, v: banded_attention(q, k, v, window),
        "masked_sdpa": masked_sdpa,
    }
    if device != "cpu":  # on the CPU `banded` is this kernel
        found["blocked"] = lambda q, k, v: blocked_banded_attention(q, k, v, window)
    return found


def inputs(T: int, device: str, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(T)
    return tuple(torch.randn(BATCH, HEADS, T, HEAD_SIZE, generator=g).to(device, dtype).requires_grad_()
                 for _ in range(3))


def forward_backward(fn: Callable[..., torch.Tensor], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    fn(q, k, v).sum().backward()
    sync()
    for x in (q, k, v):
        x.grad = None
    return time.perf_counter() - start


def saved_mib(fn: Callable[..., torch.Tensor], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> float:
    """What a forward keeps for backward (distinct storages, q, k and v too when kept: in a model
    they are views of the QKV projection's output, alive only for that): the activation memory a
    layer holds in training, where the peak of one call is transient."""
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(q, k, v)
    return sum(saved.values()) / 2**20


def rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20


def memory_child(name: str, T: int, window: int) -> None:
    """In a fresh process: resident memory one forward + backward adds at its peak (MiB)."""
    fn = kernels(window, "cpu")[name]
    # A first call at a small context loads what the kernels load once (libraries, thread pools),
    # below the peak measured next.
    fn(*inputs(2 * window, "cpu", torch.float32)).sum().backward()
    q, k, v = inputs(T, "cpu", torch.float32)
    if name == "masked_sdpa":
        fn(*(x.detach() for x in (q, k, v)))  # the mask exists before, as in a model
    before = rss_mib()
    fn(q, k, v).sum().backward()
    print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before}))


def peak_memory_mib(name: str, T: int, window: int, device: str, dtype: torch.dtype) -> float:
    if device == "cpu":
        out = subprocess.run([sys.executable, "-m", "bench.sparse_attention", "--memory-child", name, str(T),
                              str(window)], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])["peak_mib"]
    from deepspeed.accelerator import get_accelerator

    accel = get_accelerator()
    q, k, v = inputs(T, device, dtype)
    kernels(window, device)[name](q, k, v).sum().backward()  # warm-up: compiled kernels, masks
    for x in (q, k, v):
        x.grad = None
    accel.synchronize()
    accel.reset_peak_memory_stats()
    before = accel.memory_allocated()
    kernels(window, device)[name](q, k, v).sum().backward()
    accel.synchronize()
    return (accel.max_memory_allocated() - before) / 2**20


def measure(contexts: list[int], window: int, device: str, dtype: torch.dtype, repeats: int) -> list[dict]:
    """Each kernel's median forward + backward seconds, peak and saved memory, at each context."""
    sync = getattr(torch.get_device_module(device), "synchronize", lambda: None) if device != "cpu" else (
        lambda: None)
    names = list(kernels(window, device))
    rows = []
    for T in contexts:
        q, k, v = inputs(T, device, dtype)
        fns = kernels(window, device)
        for fn in fns.values():  # warm-up (and compilation, on a GPU)
            forward_backward(fn, q, k, v, sync)
        times: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(repeats):  # alternate, so load from others falls on every kernel alike
            for name in names:
                times[name].append(forward_backward(fns[name], q, k, v, sync))
        for name in names:
            rows.append({
                "context": T, "window": window, "kernel": name,
                "seconds": statistics.median(times[name]), "all_seconds": times[name],
                "peak_mib": peak_memory_mib(name, T, window, device, dtype),
                "saved_mib": saved_mib(fns[name], q, k, v),
            })
    return rows


def summarize(settings: dict[str, Any], figures: dict[str, Any]) -> harness.Result:
    """The harness result of a run: `figures` holds results (one a context and kernel)."""
    rows = figures["results"]
    dense = {r["context"]: r for r in rows if r["kernel"] == "dense"}
    table = harness.Table(["context", "kernel", "ms", "speed-up", "peak MiB", "peak vs dense", "saved MiB",
                           "saved vs dense"])
    for r in rows:
        r["speedup_vs_dense"] = dense[r["context"]]["seconds"] / r["seconds"]
        r["memory_vs_dense"] = r["peak_mib"] / dense[r["context"]]["peak_mib"]
        r["saved_vs_dense"] = r["saved_mib"] / dense[r["context"]]["saved_mib"]
        table.add(r["context"], r["kernel"], round(r["seconds"] * 1e3, 1), f"{r['speedup_vs_dense']:.2f}x",
                  round(r["peak_mib"], 1), f"{r['memory_vs_dense']:.2f}x", round(r["saved_mib"], 1),
                  f"{r['saved_vs_dense']:.2f}x")
    return harness.Result(
        question=harness.question_of(__doc__), settings=settings, figures=figures, table=table,
        reference="dense causal SDPA on the same inputs, alternating with the others in the same run")


def main() -> None:
    p = harness.parser(__doc__)
    p.add_argument("--contexts", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda (bf16 there, fp32 on the CPU)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--memory-child", nargs=3, metavar=("KERNEL", "T", "WINDOW"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_child:
        name, T, window = args.memory_child
        return memory_child(name, int(T), int(window))
    device = args.device
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    settings = {"device": device, "dtype": str(dtype), "threads": torch.get_num_threads(), "batch": BATCH,
                "heads": HEADS, "head_size": HEAD_SIZE, "window": args.window, "contexts": args.contexts,
                "repeats": args.repeats}
    figures = {"results": measure(args.contexts, args.window, device, dtype, args.repeats)}
    harness.report("sparse_attention", summarize(settings, figures), args.json,
                   label="" if device == "cpu" else device)


if __name__ == "__main__":
    main()
