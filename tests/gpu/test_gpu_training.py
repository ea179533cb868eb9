"""What only a GPU shows, on one CUDA GPU: bf16 training follows the fp32 loss curve, SDPA runs
megagpt's attention on the flash kernel, the DeepSpeed engine steps with DeepSpeed's fused Adam, and
train.py logs MFU. Marker `gpu` (run with `./launch.sh test -m gpu`; `./launch.sh gpu-check` runs
them too); skipped where torch.cuda.is_available() is false.

The rest of the suite runs on DeepSpeed's CPU accelerator even on a GPU host (tests/conftest.py
sets DS_ACCELERATOR=cpu for this process). So these tests reach the GPU in two ways only: through
torch directly (the SDPA checks), and through processes started with DS_ACCELERATOR=cuda, where
megagpt's library code picks the GPU with get_accelerator() as it does in a user's run. Each
takes well under a minute on an H100/H200, after DeepSpeed's one-time JIT build of its fused Adam
op (about a minute, cached in ~/.cache/torch_extensions).
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

from megagpt.config import ModelConfig
from megagpt.model.gpt import GPT
from megagpt.sizing.flops import device_peak_flops, training_flops_per_token
from tests.train.conftest import ROOT, child_env, read_metrics, run_training

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,  # starts train.py and DeepSpeed processes, as the other slow tests do
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA GPU (torch.cuda.is_available() is false): run "
                              "`./launch.sh test -m gpu` or `./launch.sh gpu-check` on a GPU host"),
]

# A small GPT-2 with GPT-2's head size (64, a flash-attention size): 2 layers x 128 wide, 2 heads,
# 64 positions, 16 sequences a step, no dropout (the runs differ by their arithmetic alone).
SMALL_GPT = ("model.n_layer=2", "model.n_head=2", "model.n_embd=128", "model.block_size=64",
             "train.micro_batch_size=16")
STEPS, LOG_EVERY = 200, 20
# ZeRO-2 on one process: the model is built whole on the CPU from the seed, so the GPU run and the
# CPU run start from the same weights (ZeRO-3 would build it on the device, from another RNG). No
# torch.compile: it would add a minute of compilation and changes no number checked here. lr 5e-4:
# at 1e-3 with 4 layers a loss spike came or not with the rounding (two bf16 emulations differing
# only in their thread count ended 0.3% and 3.8% from fp32): a curve comparison needs a run that
# is not chaotic.
CURVE_RUN = (*SMALL_GPT, f"train.max_steps={STEPS}", "train.lr=5e-4", "train.warmup_steps=20",
             f"log.interval={LOG_EVERY}",
             "eval.interval=0", "eval.batches=8", "sample.max_new_tokens=0", "parallel.zero_stage=2",
             "parallel.compile=false")
# bf16 keeps 8 significant bits (a relative rounding of 2^-8 = 0.4%) in weights, activations and
# gradients; DeepSpeed keeps fp32 master weights and Adam moments. Each 20-step mean of the bf16
# loss may differ from the fp32 one by 0.5% (0.02-0.03 nat; the fp32 curve falls from 6.0 to 4.6),
# and so may the final eval loss. Measured on the CPU by tests/gpu/bf16_emulation.py with this
# run's model, data and schedule: bf16 weights, activations and gradients with fp32 master weights
# and AdamW (what DeepSpeed does) stayed within 0.03% of fp32 at every point; bf16 without fp32
# master weights (small updates rounded away) drifted up, past 0.5% from step 160 and 1.1% at
# step 200. 0.5% leaves over 15x room for the GPU's own kernels (flash attention, cuBLAS), and
# fails the broken run.
CURVE_TOLERANCE = 0.005


def curve_run(corpus: Path, run: Path, accelerator: str) -> tuple[Path, str]:
    """The curve run of train.py on one process of `accelerator`: the run folder and its log."""
    proc = run_training(run, corpus, *CURVE_RUN, launcher="python", nproc=1, accelerator=accelerator,
                        timeout=600)
    return run, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def bf16_gpu_run(corpus, tmp_path_factory) -> tuple[Path, str]:
    """train.py on the GPU (DeepSpeed bf16, fused Adam)."""
    # A first GPU run also JIT-builds DeepSpeed's fused Adam (about a minute, then cached).
    return curve_run(corpus, tmp_path_factory.mktemp("gpu") / "bf16", "cuda")


@pytest.fixture(scope="module")
def fp32_cpu_run(corpus, tmp_path_factory) -> tuple[Path, str]:
    """The same run on DeepSpeed's CPU accelerator: fp32 throughout, torch's AdamW (the same update)."""
    return curve_run(corpus, tmp_path_factory.mktemp("cpu") / "fp32", "cpu")


def logged(log: str, text: str) -> str:
    """The first line of `log` holding `text`."""
    return next(line for line in log.splitlines() if text in line)


def run_config(run: Path) -> dict:
    return yaml.safe_load((run / "config.yaml").read_text())


def test_bf16_training_follows_the_fp32_loss_curve(bf16_gpu_run, fp32_cpu_run):
    (gpu, gpu_log), (cpu, cpu_log) = bf16_gpu_run, fp32_cpu_run
    assert logged(gpu_log, "layout: world 1").endswith("| cuda")
    assert "bf16.enabled=True (" in gpu_log  # train.precision=auto: bf16 on a GPU
    assert logged(cpu_log, "layout: world 1").endswith("| cpu")
    assert "bf16.enabled=False (" in cpu_log

    bf16 = {m["step"]: m["loss"] for m in read_metrics(gpu) if "loss" in m}
    fp32 = {m["step"]: m["loss"] for m in read_metrics(cpu) if "loss" in m}
    assert sorted(bf16) == sorted(fp32) == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
    assert fp32[STEPS] < fp32[LOG_EVERY] - 1.0  # the reference learns: the comparison means something
    gaps = {step: (bf16[step] - fp32[step]) / fp32[step] for step in fp32}
    print("\nstep  fp32 (CPU)  bf16 (GPU)  gap\n" + "\n".join(
        f"{step:4d}  {fp32[step]:10.4f}  {bf16[step]:10.4f}  {gaps[step]:+.2%}" for step in sorted(fp32)))
    assert all(abs(gap) <= CURVE_TOLERANCE for gap in gaps.values()), gaps

    bf16_eval = [m["eval_loss"] for m in read_metrics(gpu) if "eval_loss" in m]
    fp32_eval = [m["eval_loss"] for m in read_metrics(cpu) if "eval_loss" in m]
    assert len(bf16_eval) == len(fp32_eval) == 1
    assert bf16_eval[0] == pytest.approx(fp32_eval[0], rel=CURVE_TOLERANCE)


def test_mfu_and_peak_memory_are_logged_on_the_gpu(bf16_gpu_run):
    run, log = bf16_gpu_run
    name = torch.cuda.get_device_name()
    peak = device_peak_flops(name)
    assert peak is not None, f"no bf16 peak for {name!r}: add it to megagpt.sizing.flops.GPU_PEAK_BF16"
    flops_per_token = training_flops_per_token(ModelConfig(**run_config(run)["model"]))
    train = [m for m in read_metrics(run) if "loss" in m]
    assert len(train) == STEPS // LOG_EVERY
    device_bytes = torch.cuda.get_device_properties(0).total_memory
    for m in train:
        assert 0 < m["mfu"] < 1
        # one device: MFU is the achieved FLOP/s over the peak of the device torch names
        assert m["mfu"] == pytest.approx(m["tokens_per_sec"] * flops_per_token / peak, rel=1e-6)
        assert 0 < m["peak_memory_gib"] * 2**30 < device_bytes
    assert "| MFU " in logged(log, f"step {STEPS}/{STEPS}")


# Builds the engine as train.py does and takes two optimizer steps on one batch: a step that
# updates the weights lowers that batch's loss.
ENGINE_PROBE = """
import json, sys
import torch
import torch.distributed as dist
from megagpt.config import load_config
from megagpt.training.engine import build_engine, init_distributed
from megagpt.sizing.layout_rules import plan_layout
from megagpt.parallel.topology import Topology

init_distributed()
cfg = load_config("configs/tiny.yaml", sys.argv[1:])
engine, _ = build_engine(cfg, Topology(plan_layout(cfg, dist.get_world_size())))
x = torch.randint(0, cfg.model.vocab_size, (cfg.train.micro_batch_size, cfg.model.block_size),
                  device=engine.device, generator=torch.Generator(engine.device).manual_seed(0))
losses = []
for _ in range(2):
    _, loss = engine(x, x, return_logits=False)
    engine.backward(loss)
    engine.step()
    losses.append(loss.item())
basic = type(engine.basic_optimizer)
print("ENGINE " + json.dumps({"optimizer": f"{basic.__module__}.{basic.__qualname__}",
                              "device": str(engine.device), "bf16": engine.bfloat16_enabled(),
                              "losses": losses}))
dist.destroy_process_group()
"""


def test_the_engine_steps_with_deepspeeds_fused_adam(corpus):
    """build_engine on the GPU, as train.py builds it for the curve run (ZeRO-2): ds_config.json
    filled for a GPU asks for DeepSpeed's Adam without torch_adam, which DeepSpeed serves with its
    fused CUDA op."""
    args = [f"data.path={corpus}", f"data.valid_path={corpus}/valid", *SMALL_GPT, "parallel.zero_stage=2",
            "parallel.compile=false"]
    proc = subprocess.run([sys.executable, "-c", ENGINE_PROBE, *args], cwd=ROOT, env=child_env("cuda"),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    engine = json.loads(logged(proc.stdout, "ENGINE ").removeprefix("ENGINE "))
    assert engine["optimizer"] == "deepspeed.ops.adam.fused_adam.FusedAdam", engine
    assert engine["device"].startswith("cuda") and engine["bf16"], engine
    first, second = engine["losses"]
    assert math.isfinite(first) and second < first, engine  # the fused step updated the weights


def attention_ops(config: ModelConfig, backends: list[SDPBackend] | None) -> tuple[set[str], float]:
    """The SDPA operators a bf16 training step (forward and backward) of GPT(config) runs on the GPU,
    and its loss; `backends` restricts SDPA's choice (None: SDPA chooses, as in training)."""
    torch.manual_seed(0)
    model = GPT(config).to("cuda", torch.bfloat16).train()
    idx = torch.randint(0, config.vocab_size, (8, config.block_size + 1), device="cuda")
    # The operators SDPA dispatches to are recorded on the host: no CUDA tracing (CUPTI) needed.
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with sdpa_kernel(backends) if backends else contextlib.nullcontext():
            _, loss = model(idx[:, :-1], idx[:, 1:], return_logits=False)
            loss.backward()
        torch.cuda.synchronize()
    return {e.name for e in prof.events() if "scaled_dot_product" in e.name}, loss.item()


# GPT-2 small's attention: head size 64, 1,024 positions; 2 layers, to be quick.
GPT2_ATTENTION = ModelConfig.preset("gpt2-small", n_layer=2, dropout=0.0)


def test_sdpa_runs_megagpts_attention_on_the_flash_kernel():
    # Restricted to flash, SDPA raises ("No available kernel") unless flash can run this call.
    flash, flash_loss = attention_ops(GPT2_ATTENTION, [SDPBackend.FLASH_ATTENTION])
    assert {"aten::_scaled_dot_product_flash_attention",
            "aten::_scaled_dot_product_flash_attention_backward"} <= flash, flash
    _, math_loss = attention_ops(GPT2_ATTENTION, [SDPBackend.MATH])
    assert flash_loss == pytest.approx(math_loss, rel=1e-2)  # the same attention, in bf16


def test_sdpa_left_to_choose_takes_a_fused_kernel_not_the_math_fallback():
    """As in training: GPT-2's dropout, bf16, SDPA choosing. The math fallback (what an attn_mask, an
    odd head size or fp32 dropout can silently cause) materialises the T x T scores."""
    chosen, _ = attention_ops(ModelConfig.preset("gpt2-small", n_layer=2), None)
    print(f"\nSDPA chose: {sorted(chosen)}")
    fused = {name for name in chosen if any(k in name for k in ("flash", "efficient", "cudnn"))}
    assert fused and not any("math" in name for name in chosen), chosen
