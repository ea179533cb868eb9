"""GPU training throughput and MFU: megagpt's DeepSpeed path against a plain-PyTorch reference.

    python bench/gpu_train.py                 # on a machine with an NVIDIA GPU: both parts, ~10 min
    python bench/gpu_train.py --part small    # GPT-2 124M only
    python bench/gpu_train.py --smoke         # tiny shapes on whatever device there is (the test)

small: GPT-2 124M on one GPU, the same batches. The reference is written here, nanoGPT style (SDPA
attention, bf16 autocast, torch's fused AdamW); megagpt runs its own model in a DeepSpeed engine
built from ds_config.json as train.py fills it (bf16, DeepSpeed's fused Adam). Tokens/s and MFU of
each, and whether SDPA's flash kernel runs megagpt's attention.
xl: GPT-2 1.5B with ZeRO-3 and activation checkpointing on one GPU: tokens/s, MFU, and peak memory
against megagpt.plan's estimate for the same layout.
Results: JSON under bench/results/ with the device name and date, and a printed table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import deepspeed  # noqa: E402
from deepspeed.accelerator import get_accelerator  # noqa: E402

from megagpt.config import ModelConfig, load_config  # noqa: E402
from megagpt.deepspeed_config import build_ds_config  # noqa: E402
from megagpt.engine import init_distributed, param_groups  # noqa: E402
from megagpt.flops import accelerator_name, device_peak_flops, training_flops_per_token  # noqa: E402
from megagpt.model import GPT  # noqa: E402
from megagpt.parallel.layout import Layout  # noqa: E402
from megagpt.plan import estimate_memory  # noqa: E402


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
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(c.vocab_size, c.n_embd), nn.Embedding(c.block_size, c.n_embd)
        self.h = nn.ModuleList(ReferenceBlock(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1))


def timed_steps(step, batches: list[torch.Tensor], warmup: int) -> float:
    """Median seconds of one training step, after `warmup` steps, synchronising the device."""
    accel, times = get_accelerator(), []
    for i, batch in enumerate(batches):
        accel.synchronize()
        start = time.perf_counter()
        step(batch)
        accel.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def reference_step_seconds(model_cfg: ModelConfig, batches: list[torch.Tensor], warmup: int) -> float:
    device, bf16 = get_accelerator().device_name(), get_accelerator().is_bf16_supported()
    torch.manual_seed(0)
    model = ReferenceGPT(model_cfg).to(device)
    fused = device != "cpu"
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=fused)

    def step(batch: torch.Tensor) -> None:
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            loss = model(batch[:, :-1], batch[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return timed_steps(step, batches, warmup)


def megagpt_engine(model_cfg: ModelConfig, micro_batch: int, zero_stage: int, checkpoint_blocks: int):
    run = load_config(ROOT / "configs/tiny.yaml", [f"train.micro_batch_size={micro_batch}",
                                                   f"parallel.zero_stage={zero_stage}"])
    on_gpu = get_accelerator().device_name() != "cpu"
    ds_config, _ = build_ds_config(ROOT / "ds_config.json", run, 1, zero_stage, on_gpu)
    torch.manual_seed(0)
    with deepspeed.zero.Init(config_dict_or_path=ds_config, enabled=zero_stage == 3):
        model = GPT(model_cfg)
    model.transformer.checkpoint_blocks = checkpoint_blocks
    engine, *_ = deepspeed.initialize(model=model, model_parameters=param_groups(model, 0.1),
                                      config=ds_config)
    return engine


def megagpt_step_seconds(engine, batches: list[torch.Tensor], warmup: int) -> float:
    def step(batch: torch.Tensor) -> None:
        batch = batch.to(engine.device)
        loss = engine(batch[:, :-1], batch[:, 1:], return_logits=False)[1]
        engine.backward(loss)
        engine.step()

    return timed_steps(step, batches, warmup)


def flash_attention_runs(engine, batch: torch.Tensor) -> bool:
    """Whether megagpt's forward runs with SDPA restricted to the flash kernel (it raises if not)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.no_grad():
            engine(batch[:, :-1].to(engine.device))
        return True
    except RuntimeError:
        return False


def small_part(args: argparse.Namespace, peak: float | None) -> dict:
    cfg = ModelConfig.preset("gpt2-tiny" if args.smoke else "gpt2-small", dropout=0.0)
    seq, micro = cfg.block_size, (4 if args.smoke else args.micro_batch)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, cfg.vocab_size, (micro, seq + 1), generator=gen).to(
        get_accelerator().device_name()) for _ in range(args.steps + args.warmup)]
    reference = reference_step_seconds(cfg, batches, args.warmup)
    engine = megagpt_engine(cfg, micro, zero_stage=1, checkpoint_blocks=0)
    ours = megagpt_step_seconds(engine, batches, args.warmup)
    flash = flash_attention_runs(engine, batches[0]) if engine.device.type != "cpu" else None
    tokens = micro * seq
    fpt = training_flops_per_token(cfg, seq)
    row = {"model": "gpt2-small" if not args.smoke else "gpt2-tiny", "micro_batch": micro, "seq": seq,
           "megagpt_tokens_per_s": tokens / ours, "reference_tokens_per_s": tokens / reference,
           "speedup": reference / ours, "flash_attention": flash}
    if peak:
        row |= {"megagpt_mfu": tokens / ours * fpt / peak, "reference_mfu": tokens / reference * fpt / peak}
    return row


def xl_part(args: argparse.Namespace, peak: float | None) -> dict:
    cfg = ModelConfig.preset("gpt2-tiny" if args.smoke else "gpt2-xl", dropout=0.0)
    seq, micro = cfg.block_size, (4 if args.smoke else args.xl_micro_batch)
    accel = get_accelerator()
    accel.reset_peak_memory_stats()
    engine = megagpt_engine(cfg, micro, zero_stage=3, checkpoint_blocks=1)
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, cfg.vocab_size, (micro, seq + 1), generator=gen)
               for _ in range(args.steps + args.warmup)]
    seconds = megagpt_step_seconds(engine, batches, args.warmup)
    tokens = micro * seq
    estimate = estimate_memory(cfg, Layout(1, 1, 1, 3, 1, micro), seq, num_micro=1)
    row = {"model": "gpt2-xl" if not args.smoke else "gpt2-tiny", "micro_batch": micro, "seq": seq,
           "zero_stage": 3, "activation_checkpoint": 1, "megagpt_tokens_per_s": tokens / seconds,
           "planned_gib": estimate.total / 2**30}
    if engine.device.type != "cpu":
        row["peak_allocated_gib"] = accel.max_memory_allocated() / 2**30
        row["peak_vs_plan"] = row["peak_allocated_gib"] / row["planned_gib"]
    if peak:
        row["megagpt_mfu"] = tokens / seconds * training_flops_per_token(cfg, seq) / peak
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["small", "xl", "both"], default="both")
    p.add_argument("--smoke", action="store_true", help="tiny shapes: checks the script runs, anywhere")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--micro-batch", type=int, default=16, help="GPT-2 124M sequences a step")
    p.add_argument("--xl-micro-batch", type=int, default=8, help="GPT-2 1.5B sequences a step")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    if args.smoke:
        args.steps, args.warmup = 2, 1
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    init_distributed()
    device = accelerator_name()
    peak = device_peak_flops(device)
    rows = []
    if args.part in ("small", "both"):
        rows.append(small_part(args, peak))
    if args.part in ("xl", "both"):
        rows.append(xl_part(args, peak))
    out = {"bench": "gpu_train", "date": str(date.today()), "device": device, "peak_flops": peak,
           "torch": torch.__version__, "deepspeed": deepspeed.__version__, "results": rows}
    path = args.json or ROOT / f"bench/results/gpu_train-{device.replace(' ', '_')}-{date.today()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"device: {device}" + (f" (peak {peak / 1e12:.0f} TFLOP/s bf16)" if peak else " (no known peak)"))
    for r in rows:
        mfu = r.get("megagpt_mfu")
        line = (f"{r['model']:<11} micro {r['micro_batch']:>2} x {r['seq']}: megagpt "
                f"{r['megagpt_tokens_per_s']:,.0f} tokens/s" + (f", MFU {mfu:.1%}" if mfu else ""))
        if "reference_tokens_per_s" in r:
            line += (f" | reference {r['reference_tokens_per_s']:,.0f} tokens/s"
                     + (f", MFU {r['reference_mfu']:.1%}" if "reference_mfu" in r else "")
                     + f" | ratio {r['speedup']:.2f}x | flash attention: {r['flash_attention']}")
        if "planned_gib" in r:
            line += f" | planned {r['planned_gib']:.1f} GiB"
            if "peak_allocated_gib" in r:
                line += f", peak {r['peak_allocated_gib']:.1f} GiB ({r['peak_vs_plan']:.2f}x)"
        print(line)
    print(f"results: {path}")
    assert all(math.isfinite(r["megagpt_tokens_per_s"]) for r in rows)


if __name__ == "__main__":
    main()
