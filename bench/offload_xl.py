"""Does the real 1.5B GPT-2 train on one 24 GiB CPU machine with ZeRO-3 offload, and what does a step cost?

    python -m bench.offload_xl [--layers 48] [--seq 64] [--steps 3] [--optimizer nvme] [--params nvme]
                               [--folder /tmp/offload-xl] [--speed-seq 1024] [--json FILE]

GPT-2 XL as megagpt builds it (preset gpt2-xl: 1,557,611,200 parameters, vocab 50257, context
1024; dropout off so runs compare exactly), built by megagpt.training.engine.build_engine like
train.py, one rank, on a repeated batch of --seq random tokens. Each phase is its own process (its
peak RSS its own, the memory returned between phases):
1. train: --steps optimizer steps (forward, backward, optimizer timed apart), a one-copy checkpoint
   (megagpt.checkpoint.Checkpointer: seconds, bytes), the logits of a probe batch, then one more
   step: the uninterrupted next loss;
2. resume: a fresh engine loads the checkpoint and takes that step: its loss against (1)'s;
3. export: `python -m megagpt.convert to-hf` on the checkpoint, transformers' GPT2LMHeadModel
   loaded from it: its logits on the probe batch against (1)'s (max abs difference);
4. speed: two steps at --speed-seq tokens with activation checkpointing, against the compute-only
   time (the step's FLOPs at this machine's measured fp32 matmul rate).
Peak RSS per phase beside megagpt.sizing.host_memory's prediction; offload-folder bytes beside
its prediction. Everything written under --folder is deleted at the end.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import harness
from bench.harness import ROOT

PHASES = ("train", "resume", "export", "speed")


def overrides(args: Any, seq: int, phase_folder: Path) -> list[str]:
    return ["model.preset=gpt2-xl", f"model.n_layer={args.layers}", "model.dropout=0",
            "train.micro_batch_size=1", "train.warmup_steps=0", "train.lr=1e-4", "train.max_steps=1000",
            f"parallel.offload_optimizer={args.optimizer}", f"parallel.offload_params={args.params}",
            f"parallel.offload_path={args.folder / 'offload'}", f"log.dir={phase_folder}",
            *(["parallel.activation_checkpoint=1"] if seq > 256 else [])]


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def rss_gib() -> float:
    """Resident memory now (peak_rss_gib is the peak so far)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def locked_gib() -> float:
    """Page-locked memory now: DeepSpeed's NVMe swap buffers (part of the resident figure)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmLck:")) / 2**20


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.exists() else 0


def engine_for(args: Any, seq: int) -> tuple[Any, Any, Any]:
    """(engine, topology, config) of one rank, built as train.py builds it."""
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=os.environ.get("MASTER_PORT", "29517"))
    from megagpt.config import load_config
    from megagpt.parallel.topology import Topology
    from megagpt.training.engine import build_engine, init_distributed, run_layout

    cfg = load_config(None, overrides(args, seq, args.folder / "run"))
    init_distributed()
    topo = Topology(run_layout(cfg))
    engine, _ = build_engine(cfg, topo)
    return engine, topo, cfg


def batch(seq: int, seed: int) -> tuple[Any, Any]:
    import torch

    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 50257, (1, seq + 1), generator=g)
    return tokens[:, :-1], tokens[:, 1:]


def timed_step(engine: Any, x: Any, y: Any) -> dict[str, float]:
    t0 = time.perf_counter()
    _, loss = engine(x, y, return_logits=False)
    t1 = time.perf_counter()
    engine.backward(loss)
    t2 = time.perf_counter()
    engine.step()
    t3 = time.perf_counter()
    return {"loss": loss.item(), "forward_s": t1 - t0, "backward_s": t2 - t1, "optimizer_s": t3 - t2}


def phase_train(args: Any) -> dict[str, Any]:
    import torch

    from megagpt import checkpoint
    from megagpt.formats.tokenizer import Tokenizer

    # A checkpoint carries its tokenizer; the random-token batches need none, a small one serves.
    texts = (ROOT / "data/eval/wikitext-2-raw/wiki.test.raw").read_text().splitlines()[:2000]
    tokenizer = Tokenizer.train(texts, args.folder / "tokenizer.model", vocab_size=1000)
    start = time.perf_counter()
    engine, topo, cfg = engine_for(args, args.seq)
    built = time.perf_counter() - start
    rss = {"after_build": rss_gib(), "peak_after_build": peak_rss_gib(), "locked": locked_gib()}
    x, y = batch(args.seq, 0)
    steps = [timed_step(engine, x, y) for _ in range(args.steps)]
    rss.update(after_steps=rss_gib(), peak_after_steps=peak_rss_gib())
    if "resume" in args.skip:  # no checkpoint to resume from: the steps are the result
        offloaded = folder_bytes(args.folder / "offload")
        return {"build_s": built, "steps": steps, "rss_gib": rss, "offload_bytes": offloaded,
                "parameters": engine.module.num_parameters()}
    folder = args.folder / "checkpoints"
    saver = checkpoint.Checkpointer(engine, topo, folder, cfg.model, tokenizer)
    t = time.perf_counter()
    path = saver.save(args.steps, {})
    save_s = time.perf_counter() - t
    rss.update(after_save=rss_gib(), peak_after_save=peak_rss_gib())
    engine.eval()
    with torch.no_grad():
        logits, _ = engine(batch(args.seq, 1)[0])
    torch.save(logits.float(), args.folder / "probe_logits.pt")
    engine.train()
    offload_bytes = folder_bytes(args.folder / "offload")
    next_step = timed_step(engine, x, y)
    return {"build_s": built, "steps": steps, "next_loss": next_step["loss"], "checkpoint": str(path),
            "checkpoint_s": save_s, "checkpoint_bytes": folder_bytes(path), "offload_bytes": offload_bytes,
            "parameters": engine.module.num_parameters(), "rss_gib": rss}


def phase_resume(args: Any) -> dict[str, Any]:
    from megagpt import checkpoint

    engine, topo, _ = engine_for(args, args.seq)
    path = checkpoint.latest(args.folder / "checkpoints")
    t = time.perf_counter()
    checkpoint.load(engine, topo, path)
    load_s = time.perf_counter() - t
    return {"load_s": load_s, "next_loss": timed_step(engine, *batch(args.seq, 0))["loss"]}


def phase_export(args: Any) -> dict[str, Any]:
    import torch
    from transformers import GPT2LMHeadModel

    from megagpt import checkpoint

    out = args.folder / "hf"
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "megagpt.convert", "to-hf",
                    str(checkpoint.latest(args.folder / "checkpoints")), str(out), "--force"],
                   cwd=ROOT, check=True)
    export_s = time.perf_counter() - t
    model = GPT2LMHeadModel.from_pretrained(out, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(batch(args.seq, 1)[0]).logits
    ours = torch.load(args.folder / "probe_logits.pt")
    return {"export_s": export_s, "export_bytes": folder_bytes(out),
            "max_abs_logit_diff": (logits - ours).abs().max().item()}


def phase_speed(args: Any) -> dict[str, Any]:
    import torch

    from megagpt.sizing.flops import training_flops_per_token

    engine, _, cfg = engine_for(args, args.speed_seq)
    x, y = batch(args.speed_seq, 2)
    steps = [timed_step(engine, x, y) for _ in range(2)]
    a, b = torch.randn(2048, 1600), torch.randn(1600, 6400)
    t = time.perf_counter()
    for _ in range(5):
        a @ b
    rate = 5 * 2 * 2048 * 1600 * 6400 / (time.perf_counter() - t)
    # Recomputing each block's forward in the backward (activation checkpointing) adds a forward.
    flops = training_flops_per_token(cfg.model, args.speed_seq) * args.speed_seq * 8 / 6
    return {"steps": steps, "matmul_flops_per_s": rate, "compute_only_s": flops / rate}


def run_phase(args: Any, phase: str) -> dict[str, Any]:
    """One phase in a child process of its own: its figures and its peak RSS."""
    report = args.folder / f"{phase}.json"
    cmd = [sys.executable, "-m", "bench.offload_xl", "--phase", phase, "--folder", str(args.folder),
           "--layers", str(args.layers), "--seq", str(args.seq), "--steps", str(args.steps),
           "--optimizer", args.optimizer, "--params", args.params, "--speed-seq", str(args.speed_seq),
           *(["--skip", *args.skip] if args.skip else [])]
    print(f"offload_xl: phase {phase} ...", flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    return json.loads(report.read_text())


def child(args: Any) -> None:
    figures = {"train": phase_train, "resume": phase_resume, "export": phase_export,
               "speed": phase_speed}[args.phase](args)
    figures["peak_rss_gib"] = peak_rss_gib()
    (args.folder / f"{args.phase}.json").write_text(json.dumps(figures))


def predicted(args: Any) -> dict[str, float]:
    from megagpt.config import load_config
    from megagpt.sizing.host_memory import offload_bytes
    from megagpt.sizing.layout_rules import plan_layout

    cfg = load_config(None, overrides(args, args.seq, args.folder / "run"))
    need = offload_bytes(cfg.model, plan_layout(cfg, 1), on_gpu=False, tokens=args.seq)
    return {"host_gib": need.host / 2**30, "disk_gib": need.disk / 2**30}


def summarize(settings: dict[str, Any], figures: dict[str, Any]) -> harness.Result:
    train = figures["train"]
    table = harness.Table(["phase", "seconds", "peak RSS GiB", "what"])
    for i, s in enumerate(train["steps"], 1):
        table.add(f"step {i}", round(s["forward_s"] + s["backward_s"] + s["optimizer_s"], 1),
                  None, f"loss {s['loss']:.4f} (fwd {s['forward_s']:.1f} s, bwd {s['backward_s']:.1f} s, "
                  f"optimizer {s['optimizer_s']:.1f} s)")
    table.add("build and steps", round(train["build_s"], 1), round(train["rss_gib"]["peak_after_steps"], 2),
              f"build; predicted host peak {figures['predicted']['host_gib']:.2f} GiB, folder "
              f"{train['offload_bytes'] / 2**30:.2f} GiB (predicted {figures['predicted']['disk_gib']:.2f})")
    claims, met = [f"{settings['steps']} steps with the loss finite and falling"], [_falling(train["steps"])]
    if "checkpoint_s" in train:
        table.add("checkpoint save", round(train["checkpoint_s"], 1), round(train["peak_rss_gib"], 2),
                  f"{train['checkpoint_bytes'] / 2**30:.2f} GiB")
    if "resume" in figures:
        r = figures["resume"]
        table.add("resume", round(r["load_s"], 1), round(r["peak_rss_gib"], 2),
                  f"next loss {r['next_loss']:.6f} vs uninterrupted {train['next_loss']:.6f}")
        claims.append("resume exact")
        met.append(r["next_loss"] == train["next_loss"])
    if "export" in figures:
        e = figures["export"]
        table.add("export to-hf", round(e["export_s"], 1), round(e["peak_rss_gib"], 2),
                  f"max |logit diff| {e['max_abs_logit_diff']:.2e}")
        claims.append("export logits within 1e-3")
        met.append(e["max_abs_logit_diff"] < 1e-3)
    if "speed" in figures:
        s = figures["speed"]
        step = s["steps"][-1]
        total = step["forward_s"] + step["backward_s"] + step["optimizer_s"]
        table.add(f"step at {settings['speed_seq']} tokens", round(total, 1), round(s["peak_rss_gib"], 2),
                  f"{total / s['compute_only_s']:.2f}x the compute-only {s['compute_only_s']:.0f} s")
    claims.append("host peak of the steps within 15% of the prediction")
    met.append(abs(train["rss_gib"]["peak_after_steps"] / figures["predicted"]["host_gib"] - 1) < 0.15)
    return harness.Result(
        question=harness.question_of(__doc__), settings=settings, figures=figures, table=table,
        reference="an uninterrupted run (resume), transformers' GPT2LMHeadModel (export), the step's "
                  "FLOPs at the measured matmul rate (speed), megagpt.sizing.host_memory (memory)",
        goal=harness.Goal(claim=", ".join(claims), met=all(met)))


def _falling(steps: list[dict[str, float]]) -> bool:
    losses = [s["loss"] for s in steps]
    return all(math.isfinite(x) for x in losses) and all(b < a for a, b in zip(losses, losses[1:]))


def main() -> None:
    p = harness.parser(__doc__)
    p.add_argument("--layers", type=int, default=48)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--optimizer", default="nvme", choices=["cpu", "nvme"])
    p.add_argument("--params", default="nvme", choices=["none", "cpu", "nvme"])
    p.add_argument("--folder", type=Path, default=Path("/tmp/offload-xl"))
    p.add_argument("--speed-seq", type=int, default=1024, help="0 skips the speed phase")
    p.add_argument("--skip", nargs="*", default=[], choices=PHASES[1:])
    p.add_argument("--phase", choices=PHASES, help=argparse_hidden())
    args = p.parse_args()
    args.folder = args.folder.resolve()
    if args.phase:
        return child(args)
    shutil.rmtree(args.folder, ignore_errors=True)
    args.folder.mkdir(parents=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                if k not in ("json", "phase")}
    try:
        figures: dict[str, Any] = {"predicted": predicted(args)}
        for phase in PHASES:
            if phase in args.skip or (phase == "speed" and not args.speed_seq):
                continue
            figures[phase] = run_phase(args, phase)
            shutil.rmtree(args.folder / "offload", ignore_errors=True)  # each phase makes its own
    finally:
        shutil.rmtree(args.folder, ignore_errors=True)
    label = "" if args.layers == 48 else f"{args.layers}layers"
    harness.report("offload_xl", summarize(settings, figures), args.json, label=label)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
