"""One command for a machine's first GPU: the GPU tests and the training benchmarks, in at most 10 minutes.

    ./launch.sh gpu-check                 # sets up .venv-gpu (torch's CUDA build), then runs this
    python bench/gpu_train.py             # every part, on one GPU
    python bench/gpu_train.py --parts small,xl
    python bench/gpu_train.py --smoke     # toy shapes on whatever device there is (tests/perf runs it)

Each part runs in its own process with its own time budget (seconds, H100/H200 sized), so a part
that fails, runs out of memory or runs out of time is recorded as such and the others still run:

  tests      150  python -m pytest -m gpu tests/gpu (under --smoke only collected: they are not toy-sized)
  small      190  GPT-2 124M tokens/s and MFU. megagpt's engine as train.py builds it (build_engine
                  from configs/gpt2-small.yaml): at zero_stage=1, compiled as parallel.compile=auto
                  does on a GPU, and as the config leaves it on one GPU (zero_stage auto: ZeRO-3,
                  eager); against a nanoGPT-style reference of the same shape on the same batches
                  (bf16 autocast, fused AdamW, compiled when megagpt is). And whether SDPA's flash
                  kernel accepts megagpt's attention.
  precision  100  bf16 against fp32: 200 steps of GPT-2 124M from the same seed on the same batches
                  (a fixed random token chain the model learns: the loss falls from ln 50257 toward
                  ln 4); the max and final relative difference of the two loss curves. Both eager.
  xl         100  GPT-2 1.5B with ZeRO-3 and activation checkpointing (configs/gpt2-xl.yaml, one
                  GPU): peak allocated memory against megagpt.plan's estimate of the same Layout;
                  tokens/s and MFU.
  loss        40  The LM head + loss forward and backward at GPT-2 124M's width and vocabulary, 16 x
                  1024 tokens: peak memory and time of the chunked loss (megagpt/linear_cross_entropy.py)
                  against the plain logits path, and how closely their loss and gradients agree.

The parts stop early when the whole run reaches --budget (580 s). Before them, DeepSpeed's fused
Adam is built once (JIT, cached in ~/.cache/torch_extensions): that time is reported apart.
Results: bench/results/gpu-<device>-<date>.json (bench.report.save_results) and a printed table;
each part's full output in runs/gpu-check/<part>.log.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import deepspeed  # noqa: E402
from deepspeed.accelerator import get_accelerator  # noqa: E402

from bench.report import save_results  # noqa: E402
from megagpt.config import ModelConfig, RunConfig, load_config  # noqa: E402
from megagpt.engine import build_engine, init_distributed, leave_distributed, on_cpu, run_layout  # noqa: E402
from megagpt.flops import accelerator_name, device_peak_flops, mfu, training_flops_per_token  # noqa: E402
from megagpt.model import Layers, LMHead  # noqa: E402
from megagpt.parallel.topology import Topology  # noqa: E402
from megagpt.plan import GiB, estimate_memory, logits_activation_bytes  # noqa: E402

# Seconds, sized for an H100/H200 with cold caches: small compiles two models (about a minute each).
BUDGETS = {"tests": 150, "small": 190, "precision": 100, "xl": 100, "loss": 40}
CHAIN_STATES, CHAIN_SUCCESSORS = 2048, 4
LOGS = ROOT / "runs/gpu-check"


# --- the parts, each run in a process of its own (--run-part) ---------------------------------

class Figures(dict):
    """A part's figures, written to `path` at every addition: a part cut off by its time budget
    still reports what it measured."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path
        self.failed: list[str] = []

    def add(self, **figures) -> None:
        self.update(figures)
        self.path.write_text(json.dumps(self, indent=2))

    @contextmanager
    def measuring(self, key: str) -> Iterator[None]:
        """One measurement of several in a part: an exception in it is recorded under `key` and
        printed, and the part goes on to the next one (then exits as failed)."""
        try:
            yield
        except Exception as err:
            traceback.print_exc()
            self.failed.append(key)
            self.add(**{key: {"error": repr(err)}})


def config_name(args: argparse.Namespace, name: str) -> str:
    """configs/<name>.yaml; under --smoke configs/tiny.yaml (its toy model) instead."""
    return f"configs/{'tiny' if args.smoke else name}.yaml"


def run_config(args: argparse.Namespace, name: str, overrides: list[str]) -> RunConfig:
    return load_config(ROOT / config_name(args, name), overrides)


def engine_of(cfg: RunConfig):
    """The engine train.py would run `cfg` in, on this world (one process here)."""
    return build_engine(cfg, Topology(run_layout(cfg)))[0]


def free_memory() -> None:
    """Give the memory of dropped engines and models back before the next measurement."""
    gc.collect()
    get_accelerator().empty_cache()


def engine_run(cfg: RunConfig, batches: list[torch.Tensor], warmup: int) -> tuple[dict, float, list[float]]:
    """Train a fresh engine of `cfg` on `batches`: ({zero_stage, bf16, compiled}, the median step
    seconds after `warmup` steps, the losses); the engine is destroyed after."""
    free_memory()  # of the engines and models measured before
    engine = engine_of(cfg)
    seconds, losses = timed_steps(lambda batch: engine_step(engine, batch), batches, warmup)
    info = {"zero_stage": engine.zero_optimization_stage(), "bf16": engine.bfloat16_enabled(),
            "compiled": engine.is_compiled}
    engine.destroy()
    return info, seconds, torch.stack(losses).float().cpu().tolist()


def chain_batches(vocab: int, micro: int, seq: int, count: int, seed: int) -> list[torch.Tensor]:
    """`count` batches of (micro, seq + 1) token ids walking a fixed random chain: each of
    CHAIN_STATES ids is followed by one of its CHAIN_SUCCESSORS successors, so a model learns it
    (loss from ln vocab toward ln 4) and every run with the same seed sees the same tokens."""
    gen = torch.Generator().manual_seed(seed)
    states = min(vocab, CHAIN_STATES)
    successors = torch.randint(0, states, (states, CHAIN_SUCCESSORS), generator=gen)
    rows = count * micro
    tokens = torch.empty(rows, seq + 1, dtype=torch.long)
    tokens[:, 0] = torch.randint(0, states, (rows,), generator=gen)
    choice = torch.randint(0, CHAIN_SUCCESSORS, (rows, seq), generator=gen)
    for t in range(seq):
        tokens[:, t + 1] = successors[tokens[:, t], choice[:, t]]
    return list(tokens.view(count, micro, seq + 1))


def engine_step(engine, batch: torch.Tensor) -> torch.Tensor:
    """One training step as megagpt.train.train_step takes it (grad_accum 1); the loss."""
    batch = batch.to(engine.device)
    loss = engine(batch[:, :-1], batch[:, 1:], return_logits=False)[1]
    engine.backward(loss)
    engine.step()
    return loss.detach()


def timed_steps(step: Callable[[torch.Tensor], object], batches: list[torch.Tensor],
                warmup: int) -> tuple[float, list]:
    """(Median seconds of one step after `warmup` steps (compilation happens there), each step's
    result), the device synchronised around every step."""
    accel, times, results = get_accelerator(), [], []
    for batch in batches:
        accel.synchronize()
        start = time.perf_counter()
        results.append(step(batch))
        accel.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[warmup:]), results


def throughput(model: ModelConfig, micro: int, seconds: float) -> dict:
    """Step time, tokens/s and MFU (None without a known peak) of one device."""
    seq = model.block_size
    tokens_per_s = micro * seq / seconds
    peak = device_peak_flops(accelerator_name())
    return {"step_ms": seconds * 1e3, "tokens_per_s": tokens_per_s,
            "mfu": mfu(tokens_per_s, training_flops_per_token(model, seq), 1, peak)}


class ReferenceBlock(nn.Module):
    """nanoGPT's block: pre-LN, SDPA causal attention, tanh-GELU MLP."""

    def __init__(self, c: ModelConfig):
        super().__init__()
        self.n_head = c.n_head
        self.ln_1, self.ln_2 = nn.LayerNorm(c.n_embd), nn.LayerNorm(c.n_embd)
        self.c_attn, self.c_proj = nn.Linear(c.n_embd, 3 * c.n_embd), nn.Linear(c.n_embd, c.n_embd)
        self.c_fc, self.mlp_proj = nn.Linear(c.n_embd, 4 * c.n_embd), nn.Linear(4 * c.n_embd, c.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.c_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class ReferenceGPT(nn.Module):
    """nanoGPT's GPT-2: tied embedding, the vocabulary padded as megagpt pads it (nanoGPT's 50304)."""

    def __init__(self, c: ModelConfig):
        super().__init__()
        self.wte = nn.Embedding(c.padded_vocab_size, c.n_embd)
        self.wpe = nn.Embedding(c.block_size, c.n_embd)
        self.h = nn.ModuleList(ReferenceBlock(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd)
        self.lm_head = nn.Linear(c.n_embd, c.padded_vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1))


def reference_step_seconds(model_cfg: ModelConfig, batches: list[torch.Tensor], warmup: int,
                           compiled: bool) -> float:
    device, on_gpu = get_accelerator().device_name(), not on_cpu()
    free_memory()
    torch.manual_seed(0)
    model = ReferenceGPT(model_cfg).to(device)
    if compiled:
        model.compile()
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=on_gpu)

    def step(batch: torch.Tensor) -> None:
        batch = batch.to(device)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=on_gpu):
            loss = model(batch[:, :-1], batch[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return timed_steps(step, batches, warmup)[0]


def flash_attention_runs(model_cfg: ModelConfig, batch: torch.Tensor) -> bool:
    """Whether megagpt's forward (bf16, as the engine runs it) runs with SDPA restricted to the
    flash kernel, which raises where flash cannot take the call."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from megagpt.model import GPT

    device = get_accelerator().device_name()
    model = GPT(model_cfg).to(device=device, dtype=torch.bfloat16)
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.no_grad():
            model(batch[:, :-1].to(device))
        return True
    except RuntimeError:
        return False


def small_part(args: argparse.Namespace, out: Figures) -> None:
    base = [f"train.micro_batch_size={args.micro_batch}", "train.grad_accum=1",
            "model.dropout=0.0"]  # nanoGPT pre-trains without dropout, and so does the reference
    cfg = run_config(args, "gpt2-small", [*base, "parallel.zero_stage=1"])
    model, micro = cfg.model, args.micro_batch
    batches = chain_batches(model.vocab_size, micro, model.block_size, args.warmup + args.steps, seed=0)
    out.add(config=config_name(args, "gpt2-small"), micro_batch=micro, seq=model.block_size,
            timed_steps=args.steps, warmup_steps=args.warmup)

    compiled = not on_cpu()  # what parallel.compile=auto does at zero_stage 1, until the engine says
    with out.measuring("megagpt"):
        info, seconds, _ = engine_run(cfg, batches, args.warmup)
        compiled = info["compiled"]
        out.add(megagpt={**info, **throughput(model, micro, seconds)})
    with out.measuring("reference"):
        seconds = reference_step_seconds(model, batches, args.warmup, compiled)
        out.add(reference={"compiled": compiled, **throughput(model, micro, seconds)})
    if "step_ms" in out["megagpt"] and "step_ms" in out["reference"]:
        out.add(megagpt_vs_reference=out["reference"]["step_ms"] / out["megagpt"]["step_ms"])
    with out.measuring("flash_attention"):
        out.add(flash_attention=None if on_cpu() else flash_attention_runs(model, batches[0]))
    # As the config file leaves it: zero_stage auto, which is ZeRO-3 (so eager) on one process.
    with out.measuring("megagpt_as_configured"):
        info, seconds, _ = engine_run(run_config(args, "gpt2-small", base), batches, args.warmup)
        out.add(megagpt_as_configured={**info, **throughput(model, micro, seconds)})


def precision_part(args: argparse.Namespace, out: Figures) -> None:
    steps, micro = args.precision_steps, args.precision_micro_batch
    common = [f"train.micro_batch_size={micro}", "train.grad_accum=1", "model.dropout=0.0",
              "parallel.zero_stage=1", "parallel.compile=false",  # eager both: only the precision differs
              f"train.max_steps={steps}", f"train.warmup_steps={steps // 10}"]
    # train.precision=auto trains in bf16 on a GPU; on a CPU in fp32, where both curves must be equal.
    first = "fp32 (auto)" if on_cpu() else "bf16"
    configs = {first: run_config(args, "gpt2-small", [*common, "train.precision=auto"]),
               "fp32": run_config(args, "gpt2-small", [*common, "train.precision=fp32"])}
    model = configs["fp32"].model
    batches = chain_batches(model.vocab_size, micro, model.block_size, steps, seed=1)
    out.add(config=config_name(args, "gpt2-small"), runs=[first, "fp32"], steps=steps, micro_batch=micro,
            seq=model.block_size, lr=configs["fp32"].train.lr,
            fp32_matmul_precision=torch.get_float32_matmul_precision())
    curves = {}
    for name, cfg in configs.items():
        info, seconds, curves[name] = engine_run(cfg, batches, steps // 10)
        out.add(**{f"{name} engine": {**info, "step_ms": seconds * 1e3}, f"{name} losses": curves[name]})
    a, b = torch.tensor(curves[first]), torch.tensor(curves["fp32"])
    relative = (a - b).abs() / b.abs()
    out.add(max_relative_difference=relative.max().item(), max_at_step=int(relative.argmax()) + 1,
            final_relative_difference=relative[-1].item(), first_loss=b[0].item(), final_loss=b[-1].item())


def xl_part(args: argparse.Namespace, out: Figures) -> None:
    micro = args.xl_micro_batch
    cfg = run_config(args, "gpt2-xl", [f"train.micro_batch_size={micro}", "train.grad_accum=1",
                                       "parallel.zero_stage=3", "parallel.activation_checkpoint=1"])
    layout = run_layout(cfg)
    seq = cfg.model.block_size
    plan = estimate_memory(cfg.model, layout, seq, num_micro=cfg.train.grad_accum)
    out.add(config=config_name(args, "gpt2-xl"), layout=str(layout), seq=seq, planned_gib=plan.total / GiB,
            planned_breakdown_gib={k: getattr(plan, k) / GiB
                                   for k in ("params", "grads", "optimizer", "activations", "buffers")})
    accel = get_accelerator()
    accel.reset_peak_memory_stats()
    batches = chain_batches(cfg.model.vocab_size, micro, seq, args.xl_warmup + args.xl_steps, seed=2)
    info, seconds, _ = engine_run(cfg, batches, args.xl_warmup)
    out.add(engine=info, **throughput(cfg.model, micro, seconds))
    if on_cpu():
        out.add(note="peak memory: GPU only (a CPU process's RSS is no allocator peak)")
    else:
        peak = accel.max_memory_allocated() / GiB
        out.add(peak_allocated_gib=peak, peak_reserved_gib=accel.max_memory_reserved() / GiB,
                peak_vs_plan=peak / out["planned_gib"])


def lm_head_pass(head: LMHead, x: torch.Tensor, targets: torch.Tensor, chunked: bool) -> dict:
    """One forward + backward of the LM head and loss: peak memory above what was allocated before
    (GPU only), seconds, the loss and the gradients."""
    accel = get_accelerator()
    x.grad = head.weight.grad = None
    gc.collect()
    accel.empty_cache()
    accel.synchronize()
    accel.reset_peak_memory_stats()
    before = accel.memory_allocated()
    start = time.perf_counter()
    # GPT.forward's two paths: return_logits=False (the trainer's), and the logits then their loss
    loss = head(x, targets) if chunked else Layers().cross_entropy(head(x), targets)
    loss.backward()
    accel.synchronize()
    seconds = time.perf_counter() - start
    peak = None if on_cpu() else (accel.max_memory_allocated() - before) / GiB
    return {"peak_gib": peak, "seconds": seconds, "loss": loss.detach(), "grads": (x.grad, head.weight.grad)}


def loss_part(args: argparse.Namespace, out: Figures) -> None:
    model = run_config(args, "gpt2-small", []).model
    micro, seq, device = args.micro_batch, model.block_size, get_accelerator().device_name()
    dtype = torch.float32 if on_cpu() else torch.bfloat16  # what the engine trains in (bf16.enabled)
    torch.manual_seed(0)
    head = LMHead(model.n_embd, model.padded_vocab_size, model.vocab_size).to(device=device, dtype=dtype)
    x = torch.randn(micro, seq, model.n_embd, device=device, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, model.vocab_size, (micro, seq), device=device)
    out.add(config=config_name(args, "gpt2-small"), tokens=micro * seq, width=model.n_embd,
            vocab=model.padded_vocab_size, dtype=str(dtype),
            plan_kept_gib=logits_activation_bytes(model, micro, seq, tp=1, dtype_bytes=dtype.itemsize) / GiB)
    runs = {}
    for name, chunked in (("chunked", True), ("plain", False)):
        with out.measuring(name):  # the plain path may run out of memory where the chunked one fits
            lm_head_pass(head, x, targets, chunked)  # warm-up: cuBLAS workspaces, kernel selection
            runs[name] = lm_head_pass(head, x, targets, chunked)
            out.add(**{name: {"peak_gib": runs[name]["peak_gib"], "ms": runs[name]["seconds"] * 1e3}})
    if len(runs) < 2:
        return
    chunked, plain = runs["chunked"], runs["plain"]
    grad_difference = max(((a - b).float().norm() / b.float().norm()).item()
                          for a, b in zip(chunked["grads"], plain["grads"]))
    out.add(loss_difference=(chunked["loss"] - plain["loss"]).abs().item(),
            grad_relative_difference=grad_difference)
    if on_cpu():
        out.add(note="peak memory: GPU only (a CPU process's RSS is no allocator peak)")
    else:
        out.add(memory_ratio=plain["peak_gib"] / chunked["peak_gib"])


PARTS = {"small": small_part, "precision": precision_part, "xl": xl_part, "loss": loss_part}


def run_part(args: argparse.Namespace) -> None:
    init_distributed()
    figures = Figures(args.part_out)
    PARTS[args.run_part](args, figures)
    dist.barrier()
    leave_distributed()
    if figures.failed:
        sys.exit(f"{args.run_part}: failed: {', '.join(figures.failed)} (tracebacks above)")


# --- the check: every part in a process of its own, within its budget --------------------------

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
    command = [sys.executable, str(Path(__file__).resolve()), "--run-part", name, "--part-out", str(figures),
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


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def describe(name: str, result: dict) -> str:
    """The table's text for a part's figures (those it has: a part cut short has fewer)."""
    f = result.get("figures", {})
    if name == "tests" or "summary" in result:
        return result.get("summary", "")
    text = []
    if name == "small":
        for key, label in (("megagpt", "megagpt"), ("reference", "reference"),
                           ("megagpt_as_configured", "megagpt as configured")):
            r = f.get(key, {})
            if "error" in r:
                text.append(f"{label}: failed")
            elif r:
                how = [f"zero{r['zero_stage']}"] if "zero_stage" in r else []
                how.append("compiled" if r["compiled"] else "eager")
                text.append(f"{label} ({', '.join(how)}): "
                            f"{r['tokens_per_s']:,.0f} tok/s MFU {pct(r['mfu'])}")
        if "megagpt_vs_reference" in f:
            text.append(f"megagpt/reference {f['megagpt_vs_reference']:.2f}x")
        if "flash_attention" in f:
            flash = f["flash_attention"]  # True / False, None on a CPU, or {"error": ...}
            shown = "n/a (CPU)" if flash is None else "failed" if isinstance(flash, dict) else flash
            text.append(f"flash: {shown}")
    elif name == "precision" and "final_relative_difference" in f:
        text.append(f"{' vs '.join(f['runs'])} over {f['steps']} steps: max rel diff "
                    f"{pct(f['max_relative_difference'])} (step {f['max_at_step']}), final "
                    f"{pct(f['final_relative_difference'])}; fp32 loss {f['first_loss']:.2f} -> "
                    f"{f['final_loss']:.2f}")
        if "bf16" not in f["runs"]:
            text.append("bf16 not run (CPU)")
    elif name == "xl" and "planned_gib" in f:
        if "peak_allocated_gib" in f:
            text.append(f"peak {f['peak_allocated_gib']:.1f} GiB vs plan {f['planned_gib']:.1f} GiB "
                        f"({f['peak_vs_plan']:.2f}x)")
        else:
            text.append(f"plan {f['planned_gib']:.2f} GiB, peak not measured (CPU)")
        if "tokens_per_s" in f:
            text.append(f"{f['tokens_per_s']:,.0f} tok/s MFU {pct(f['mfu'])}")
    elif name == "loss" and "grad_relative_difference" in f:
        c, p = f["chunked"], f["plain"]
        if c["peak_gib"] is not None:
            text.append(f"peak chunked {c['peak_gib']:.2f} GiB vs plain {p['peak_gib']:.2f} GiB "
                        f"({f['memory_ratio']:.1f}x less)")
        else:
            text.append("peak not measured (CPU)")
        text.append(f"{c['ms']:.1f} ms vs {p['ms']:.1f} ms")
        text.append(f"grads agree to {f['grad_relative_difference']:.1e}")
    if result["status"] != "ok" and result.get("error"):
        text.append(result["error"][-1][:120])
    return " | ".join(text)


def print_table(out: dict) -> None:
    peak = out["peak_flops"]
    print(f"\ngpu-check on {out['device']}" + (f" (peak {peak / 1e12:.0f} TFLOP/s bf16)" if peak else "")
          + f", torch {out['torch']}, DeepSpeed {out['deepspeed']}"
          + (" [smoke: toy shapes]" if out["smoke"] else ""))
    prep = out["prepare_fused_adam"]
    print(f"fused Adam: {prep['status']}" + (f" in {prep['seconds']:.0f} s" if "seconds" in prep else ""))
    print(f"{'part':<10}{'status':<10}{'time':>7}{'budget':>8}  result")
    for name, r in out["parts"].items():
        seconds = f"{r['seconds']:.0f} s" if "seconds" in r else "-"
        print(f"{name:<10}{r['status']:<10}{seconds:>7}{r['budget_s']:>6.0f} s  {describe(name, r)}")
    print(f"total {out['elapsed_s']:.0f} s of {out['budget_s']:.0f} s; each part's output in "
          f"{LOGS.relative_to(ROOT)}/<part>.log")


def check(args: argparse.Namespace) -> int:
    LOGS.mkdir(parents=True, exist_ok=True)
    device = accelerator_name()
    out = {"bench": "gpu_check", "date": str(date.today()), "device": device,
           "peak_flops": device_peak_flops(device), "torch": torch.__version__, "cuda": torch.version.cuda,
           "deepspeed": deepspeed.__version__, "smoke": args.smoke, "budget_s": args.budget,
           "prepare_fused_adam": prepare_fused_adam(), "parts": {}}
    start = time.monotonic()  # the budget is the parts': a first fused Adam build is reported above
    for name in args.parts:
        left = args.budget - (time.monotonic() - start)
        budget = min(BUDGETS[name], left)
        if budget < 10:
            result = {"status": "skipped", "summary": f"the run's --budget {args.budget:.0f} s was spent"}
        else:
            print(f"gpu-check: {name} (budget {budget:.0f} s) ...", flush=True)
            result = gpu_tests(args, budget) if name == "tests" else bench_part(name, args, budget)
            print(f"gpu-check: {name} {result['status']} in {result['seconds']:.0f} s", flush=True)
        out["parts"][name] = {"budget_s": budget, **result}
    out["elapsed_s"] = time.monotonic() - start
    stem = f"gpu-{re.sub(r'[^A-Za-z0-9.-]+', '_', device)}-{date.today()}{'-smoke' if args.smoke else ''}"
    path = args.json or ROOT / "bench/results" / f"{stem}.json"
    save_results(path, out)
    print_table(out)
    failed = [n for n, r in out["parts"].items() if r["status"] in ("failed", "timeout")]
    return 1 if failed or out["prepare_fused_adam"]["status"] == "failed" else 0


# flag: (default, under --smoke, what it is)
SIZES = {
    "steps": (20, 2, "timed steps (small)"),
    "warmup": (10, 1, "untimed steps before them (small; torch.compile compiles there)"),
    "micro_batch": (16, 4, "GPT-2 124M sequences a step (small, loss)"),
    # 200 fp32 steps of GPT-2 124M at 8 x 1024 tokens: about 40 s on an H100
    "precision_steps": (200, 20, "steps of each precision"),
    "precision_micro_batch": (8, 2, "sequences a step (precision)"),
    "xl_micro_batch": (8, 2, "GPT-2 1.5B sequences a step"),
    "xl_steps": (5, 2, "timed steps (xl)"),
    "xl_warmup": (2, 1, "untimed steps before them (xl)"),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default=",".join(BUDGETS), type=lambda s: s.split(","),
                   help=f"comma-separated, of {', '.join(BUDGETS)} (default: all, in this order)")
    p.add_argument("--smoke", action="store_true", help="toy shapes: checks every part runs, anywhere")
    p.add_argument("--budget", type=float, default=float(sum(BUDGETS.values())),
                   help="seconds for all parts together (default: the sum of their budgets)")
    for key, (full, smoke, what) in SIZES.items():
        p.add_argument(f"--{key.replace('_', '-')}", type=int, help=f"{what} ({full}; --smoke {smoke})")
    p.add_argument("--json", type=Path, default=None, help="default: bench/results/gpu-<device>-<date>.json")
    p.add_argument("--run-part", choices=PARTS, help=argparse.SUPPRESS)  # one part, in this process
    p.add_argument("--part-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    for key, (full, smoke, _) in SIZES.items():
        if getattr(args, key) is None:
            setattr(args, key, smoke if args.smoke else full)
    if args.run_part:
        run_part(args)
        return 0
    unknown = set(args.parts) - set(BUDGETS)
    if unknown:
        p.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(BUDGETS)}")
    if on_cpu() and not args.smoke:
        p.error("DeepSpeed's accelerator here is the CPU: the GPU sizes would only run out of time; "
                "--smoke runs every part at toy size")
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
