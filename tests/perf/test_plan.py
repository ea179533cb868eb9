"""The layout planner: its arithmetic by hand, its activation count against a real forward."""

import argparse
from dataclasses import replace

import pytest
import torch

from megagpt.config import ModelConfig, load_config
from megagpt.model.gpt import GPT
from megagpt.parallel.layout import Layout
from megagpt.sizing.layout_rules import Devices, plan_layout
from megagpt.sizing.parameters import stage_parameters
from megagpt.sizing.planner import (
    Cluster,
    _refusals,
    activation_bytes,
    block_activation_bytes,
    candidate_layouts,
    estimate,
    estimate_memory,
    main,
    plan,
)

XL = ModelConfig.preset("gpt2-xl")  # GPT-2's 50257 padded to 50304, a multiple of 128
XL_PARAMS = 1_557_611_200 + (50304 - 50257) * 1600  # Hugging Face's count with that padding


def saved_activation_bytes(model: torch.nn.Module, idx: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd saves for backward in one forward, weights excluded."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(idx, idx, return_logits=False)  # the trainer's call
    return sum(saved.values())


def test_vocab_padding_and_parameters_per_rank():
    assert XL.padded_vocab_size == 50304
    assert replace(XL, vocab_pad_multiple=256).padded_vocab_size == 50432  # Megatron's 128 x tp=2
    assert stage_parameters(XL, pp=1, tp=1) == XL_PARAMS
    # tp=2: matrices and column-parallel biases halve; LayerNorms, row-parallel biases, wpe stay.
    c, L = 1600, 48
    per_block = (12 * c * c + 7 * c) // 2 + 2 * c + 4 * c
    xl_tp2 = replace(XL, vocab_pad_multiple=256)
    assert stage_parameters(xl_tp2, pp=1, tp=2) == L * per_block + 50432 * c // 2 + 1024 * c + 2 * c
    assert stage_parameters(replace(XL, vocab_pad_multiple=1), 1, 1) == 1_557_611_200  # unpadded, as HF


def test_zero_stages_divide_what_the_zero_paper_says():
    for zero, (p, g, o) in {0: (1, 1, 1), 1: (1, 1, 16), 2: (1, 16, 16), 3: (16, 16, 16)}.items():
        m = estimate_memory(XL, Layout(16, 1, 1, zero, 0, 1), seq=1024, num_micro=32)
        assert m.params == pytest.approx(2 * XL_PARAMS / p)
        assert m.grads == pytest.approx(2 * XL_PARAMS / g)
        assert m.optimizer == pytest.approx(12 * XL_PARAMS / o)


def test_block_activations_by_hand():
    small = ModelConfig.preset("gpt2-small")  # dropout 0.1: two 1-byte masks a token
    per_token = 17 * 768 * 2 + 4 * 12 + 2 * 768
    assert block_activation_bytes(small, 1, 1024, tp=1) == 1024 * per_token
    assert block_activation_bytes(small, 1, 1024, tp=2) == 1024 * ((4 + 13 / 2) * 768 * 2 + 4 * 6 + 2 * 768)


def test_checkpointing_and_pipeline_change_activations_as_they_should():
    one = block_activation_bytes(XL, 1, 1024, 1)
    layer_input = 1024 * 1600 * 2
    none = activation_bytes(XL, Layout(1, 1, 1, 3, 0, 1), 1024, 8)
    full = activation_bytes(XL, Layout(1, 1, 1, 3, 1, 1), 1024, 8)
    assert none - full == pytest.approx(48 * one - (48 * layer_input + one))
    # 1F1B: the first of 4 stages holds 4 micro-batches of its 12 blocks, and no logits.
    assert activation_bytes(XL, Layout(1, 4, 1, 1, 0, 1), 1024, 8) == pytest.approx(4 * 12 * one)


@pytest.mark.parametrize("layers, heads, width, seq, batch, vocab", [
    (1, 4, 64, 64, 4, 512), (2, 4, 128, 128, 2, 1024), (4, 8, 256, 128, 2, 4096),
])
def test_activation_estimate_matches_what_autograd_saves(layers, heads, width, seq, batch, vocab):
    config = ModelConfig.preset("gpt2-tiny", n_layer=layers, n_head=heads, n_embd=width,
                                block_size=seq, vocab_size=vocab)
    torch.manual_seed(0)
    measured = saved_activation_bytes(GPT(config).train(), torch.randint(0, vocab, (batch, seq)))
    # fp32 on this CPU
    estimated = activation_bytes(config, Layout(1, 1, 1, 0, 0, batch), seq, 1, dtype_bytes=4)
    assert estimated == pytest.approx(measured, rel=0.05)


def test_only_runnable_layouts_are_candidates():
    layouts = list(candidate_layouts(XL, gpus=16, gpus_per_node=8, global_batch=512))
    assert layouts
    assert all(x.dp * x.pp * x.tp == 16 for x in layouts)
    assert all(25 % x.tp == 0 for x in layouts)  # 25 heads: tp 1 or 5, never 2
    assert {x.zero_stage for x in layouts if x.pp > 1} == {0, 1, 2, 3}  # ZeRO inside pipeline stages
    assert all(512 % (x.dp * x.micro_batch) == 0 for x in layouts)


def test_recommendation_fits_and_is_fastest():
    cluster = Cluster(gpus=16, gpu_mem_gib=80)
    plans = plan(XL, cluster, global_batch=512)
    best = plans[0]
    assert best.fits and best.memory.total <= 80 * 2**30 * 0.9
    assert all(best.step_seconds <= p.step_seconds + 0.005 for p in plans if p.fits)
    # Less memory per GPU forces sharding or checkpointing: a 16 GiB GPU cannot hold ZeRO-0.
    small = plan(XL, Cluster(gpus=16, gpu_mem_gib=16), global_batch=512)
    assert small[0].fits and small[0].layout.zero_stage > 0
    assert not any(p.fits for p in small
                   if p.layout.zero_stage == 0 and p.layout.pp == 1 and p.layout.tp == 1)


def test_gpt3_13b_on_16_40gb_gpus_with_two_stages_needs_zero3_inside_them():
    """The issue's case: 13B, pp=2, tp=1 (GPUs without NVLink): ZeRO-1 keeps each stage's 6.4B
    bf16 weights and gradients whole (~24 GiB before activations); ZeRO-3 shards them over dp 8."""
    gpt3_13b = ModelConfig.preset("gpt3-13b")
    assert stage_parameters(gpt3_13b) == pytest.approx(12.85e9, rel=1e-3)  # Table 2.1's 13.0B
    plans = plan(gpt3_13b, Cluster(gpus=16, gpu_mem_gib=40), global_batch=1024, tp=1, pp=2)
    assert plans[0].fits and plans[0].layout.zero_stage == 3
    zero1 = [p for p in plans if p.layout.zero_stage == 1]
    assert zero1 and min(p.memory.params + p.memory.grads for p in zero1) > 22 * 2**30
    assert plans[0].memory.params + plans[0].memory.grads < 4 * 2**30


def test_cli_prints_a_table_and_a_recommendation(capsys):
    assert main(["--model", "gpt2-xl", "--gpus", "16", "--gpu-mem", "80"]) == 0
    out = capsys.readouterr().out
    assert "recommended: dp" in out and "parallel.zero_stage=" in out
    assert "offload" not in out.splitlines()[-1]  # 16 x 80 GB hold GPT-2 XL's states
    # One 8 GB GPU holds GPT-2 XL with its optimizer state on the host (ZeRO-Offload); one of 3 GB
    # only with its weights offloaded too (ZeRO-Infinity): they alone are 2.9 GiB in bf16.
    assert main(["--model", "gpt2-xl", "--gpus", "1", "--gpu-mem", "8"]) == 0
    out = capsys.readouterr().out.splitlines()[-1]
    assert "parallel.offload_optimizer=cpu" in out and "offload_params" not in out
    assert main(["--model", "gpt2-xl", "--gpus", "1", "--gpu-mem", "3"]) == 0
    assert "parallel.offload_params=" in capsys.readouterr().out.splitlines()[-1]
    # ... and the host must hold what is offloaded to it: 16 GiB of host memory forces NVMe.
    assert main(["--model", "gpt2-xl", "--gpus", "1", "--gpu-mem", "24", "--host-mem", "16"]) == 0
    assert "parallel.offload_optimizer=nvme" in capsys.readouterr().out.splitlines()[-1]
    assert main(["--model", "gpt2-xl", "--gpus", "1", "--gpu-mem", "1", "--host-mem", "2"]) == 0
    assert "nothing fits" in capsys.readouterr().out
    assert main(["--model", "gpt2-xl", "--gpus", "8", "--gpu-mem", "80", "--gpu", "TPU"]) == 2


def test_zero_stage_auto_is_the_planners_fastest_that_fits_the_devices():
    cfg = load_config("configs/gpt2-xl.yaml")  # zero_stage: auto, micro-batch 8, no checkpointing
    big = plan_layout(cfg, 16, Devices(memory_gib=80, per_node=8, peak_flops=989e12))
    estimates = {s: estimate(XL, replace(big, zero_stage=s), Cluster(16, 80), 512, 1024) for s in (1, 2, 3)}
    assert estimates[big.zero_stage].fits
    assert all(estimates[big.zero_stage].step_seconds <= e.step_seconds + 0.005 for e in estimates.values())
    assert big.zero_stage < 3  # 80 GB hold XL's states unsharded: ZeRO-3's per-micro-batch gathers cost
    # 16 GB do not: only ZeRO-3 fits; nothing to shard on one GPU: ZeRO-1; no budget (a CPU): 3.
    assert plan_layout(cfg, 16, Devices(memory_gib=16, per_node=8, peak_flops=None)).zero_stage == 3
    one_gpu = load_config("configs/gpt2-small.yaml")
    assert plan_layout(one_gpu, 1, Devices(memory_gib=80, per_node=1, peak_flops=None)).zero_stage == 1
    assert plan_layout(cfg, 16).zero_stage == 3


@pytest.mark.parametrize("option, value, message", [
    ("--gpus", "0", "argument --gpus: 0 is outside [1, inf)"),
    ("--gpus", "-4", "argument --gpus: -4 is outside [1, inf)"),
    ("--gpu-mem", "-80", "argument --gpu-mem: -80 is outside (0, inf)"),
    ("--gpu-mem", "nan", "argument --gpu-mem: nan is not a finite number"),
    ("--seq", "-5", "argument --seq: -5 is outside [1, inf)"),
    ("--seq", "0", "argument --seq: 0 is outside [1, inf)"),
    ("--efficiency", "5", "argument --efficiency: 5 is outside (0, 1]"),
    ("--efficiency", "0", "argument --efficiency: 0 is outside (0, 1]"),
    ("--efficiency", "nan", "argument --efficiency: nan is not a finite number"),
    ("--inter-node-gbps", "0", "argument --inter-node-gbps: 0 is outside (0, inf)"),
    ("--global-batch", "0", "argument --global-batch: 0 is outside [1, inf)"),
    ("--gpus-per-node", "0", "argument --gpus-per-node: 0 is outside [1, inf)"),
    ("--tp", "0", "argument --tp: 0 is outside [1, inf)"),
    ("--pp", "-1", "argument --pp: -1 is outside [1, inf)"),
    ("--rows", "x", "argument --rows: 'x' is not an integer"),
])
def test_cli_refuses_nonsense_naming_the_option_and_range(option, value, message, capsys):
    argv = ["--model", "gpt2-xl", "--gpus", "16", "--gpu-mem", "80", option, value]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("options, messages", [
    (["--gpus", "6", "--tp", "3"], ["--tp 3 does not divide the model's 25 attention heads "
                                    "(tp splits the heads); tp dividing it: 1"]),
    (["--gpus", "16", "--tp", "16", "--gpus-per-node", "8"],
     ["--tp 16 does not divide the model's 25", "--tp 16 is more than --gpus-per-node 8"]),
    (["--gpus", "16", "--pp", "64"], ["--pp 64 is more stages than the model's 48 layers",
                                      "--pp 64 does not divide --gpus 16"]),
    (["--gpus", "16", "--seq", "2048"], ["--seq 2048 is longer than the model's block_size 1024"]),
    (["--gpus", "16", "--tp", "1", "--pp", "1", "--global-batch", "3"],
     ["no layout of 16 GPUs runs --global-batch 3"]),
])
def test_cli_says_why_a_tp_or_pp_cannot_split_the_model(options, messages, capsys):
    assert main(["--model", "gpt2-xl", "--gpu-mem", "80", *options]) == 2
    err = capsys.readouterr().err
    assert all(m in err for m in messages), err
    assert "nothing fits" not in err


def test_vocabulary_that_tp_cannot_split_is_named(capsys):
    odd = ModelConfig(n_layer=2, n_head=6, n_embd=48, vocab_size=99, block_size=32, vocab_pad_multiple=1)
    args = argparse.Namespace(gpus=6, gpus_per_node=8, tp=6, pp=None)
    assert _refusals(odd, args, 32) == ["--tp 6 does not divide the padded vocabulary of 99 (tp splits the "
                                        "vocabulary); tp dividing it: 1, 3"]
