"""The measuring parts of `python -m bench.gpu_train` (small, precision, xl, loss), each run in a
process of its own (`python -m bench.gpu_train --run-part NAME`), writing its figures as it goes."""

from __future__ import annotations

import argparse
import gc
import sys
import time

import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator

from bench.gpu.measure import Figures, chain_batches, config_name, engine_run, run_config, throughput
from bench.gpu.reference import reference_step_seconds
from megagpt.config import ModelConfig
from megagpt.model.gpt import Layers, LMHead
from megagpt.sizing.planner import GiB, estimate_memory, logits_activation_bytes
from megagpt.training.engine import init_distributed, leave_distributed, on_cpu, run_layout


def flash_attention_runs(model_cfg: ModelConfig, batch: torch.Tensor) -> bool:
    """Whether megagpt's forward (bf16, as the engine runs it) runs with SDPA restricted to the
    flash kernel, which raises where flash cannot take the call."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from megagpt.model.gpt import GPT

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
