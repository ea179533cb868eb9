"""Plan a parallel layout: memory per GPU and estimated step time of every feasible choice.

    python -m megagpt.plan --model gpt2-xl --gpus 16 --gpu-mem 80
    python -m megagpt.plan --config configs/gpt2-xl.yaml --gpus 16 --gpu-mem 80 --global-batch 512
    python -m megagpt.plan --model gpt3-13b --gpus 16 --gpu-mem 40        # GPT-3's batch of 1024

For each dp x pp x tp x ZeRO stage x activation checkpointing x micro-batch it estimates, for the
most loaded GPU, the bytes of parameters, gradients, optimizer state, activations and buffers
(bf16 parameters and gradients, fp32 master weights and Adam moments: ZeRO's 2 + 2 + 12 bytes a
parameter), and a step time from FLOPs, pipeline bubble and communication. It prints the feasible
layouts, fastest first, and recommends one.

The activation count is megagpt's own Block, tensor by tensor (what autograd saves: the inputs of
LayerNorms and matmuls, q/k/v, the attention output and the GELU input and output; SDPA's
flash/memory-efficient kernels never store the T x T scores), checked against the saved tensors
of a real forward in tests/perf/test_plan.py. GPT-3's banded layers (model.attention) save
compute, not activations: their FLOPs scale with the window (megagpt.sizing.flops), and FlexAttention
keeps what flash attention keeps. Step times are a first-order model (a given
fraction of peak FLOP/s, ring collectives at a given bandwidth, DeepSpeed overlapping
data-parallel communication with compute); use them to rank layouts, not as promises.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from megagpt.config import GPT3_RECIPES, MODEL_PRESETS, ConfigError, ModelConfig, load_config
from megagpt.parallel.layout import Layout, divisors
from megagpt.sizing.flops import device_peak_flops, training_flops_per_token
from megagpt.sizing.host_memory import offload_bytes
from megagpt.sizing.parameters import BF16_ADAM, block_parameters, model_state_bytes, stage_parameters

GiB = 1 << 30
BF16, FP32 = 2, 4
ZERO3_BUCKET_ELEMENTS = 5e7  # ds_config.json: reduce_bucket_size and stage3_prefetch_bucket_size
# (optimizer, parameters) offload choices, least offloaded first (ZeRO-3, pp = 1)
OFFLOADS = (("none", "none"), ("cpu", "none"), ("cpu", "cpu"), ("nvme", "none"), ("nvme", "cpu"),
            ("nvme", "nvme"))


@dataclass(frozen=True)
class Cluster:
    gpus: int
    gpu_mem_gib: float
    gpus_per_node: int = 8
    peak_flops: float = 989e12  # H100 SXM dense bf16
    efficiency: float = 0.5  # fraction of peak that large matmuls reach
    half_efficiency_tokens: int = 512  # micro-batch tokens at which matmuls reach half of that
    intra_node_gbps: float = 300.0  # NVLink, GB/s of ring bandwidth per GPU
    inter_node_gbps: float = 25.0  # InfiniBand, GB/s per GPU (200 Gb/s)
    headroom: float = 0.1  # kept free for the allocator's fragmentation and the CUDA context
    host_mem_gib: float = 1024.0  # host memory of a node, for offload
    pcie_gbps: float = 25.0  # GB/s between a GPU and the host (PCIe 4 x16, one direction)
    nvme_gbps: float = 3.0  # GB/s of a node's offload folder (one NVMe drive)
    cpu_adam_per_s: float = 1e9  # parameters a node's CPU Adam steps a second (DeepSpeed's AVX op)


@dataclass(frozen=True)
class Memory:
    params: float
    grads: float
    optimizer: float
    activations: float
    buffers: float

    @property
    def total(self) -> float:
        return self.params + self.grads + self.optimizer + self.activations + self.buffers


@dataclass(frozen=True)
class Plan:
    layout: Layout
    memory: Memory
    step_seconds: float
    fits: bool
    host: float = 0.0  # bytes of host memory a node needs (megagpt.sizing.host_memory)


def block_activation_bytes(model: ModelConfig, micro_batch: int, seq: int, tp: int,
                           dtype_bytes: int = BF16) -> float:
    """Bytes one Block saves for backward: per token, the LN inputs and outputs (4 x n_embd, whole
    on every tp rank), q/k/v, the attention output before and after its transpose, the MLP-in
    output and the GELU output (13 x n_embd, split by tp), flash attention's log-sum-exp (fp32,
    one a head) and, with dropout, two 1-byte masks."""
    c, tokens = model.n_embd, micro_batch * seq
    per_token = (4 + 13 / tp) * c * dtype_bytes + FP32 * model.n_head / tp
    if model.dropout > 0:
        per_token += 2 * c
    return tokens * per_token


def logits_activation_bytes(model: ModelConfig, micro_batch: int, seq: int, tp: int,
                            dtype_bytes: int = BF16) -> float:
    """What the output layer keeps for backward. Whole (tp = 1) the chunked loss keeps the gradients
    it computed in forward: the input's and the (padded vocabulary x width) weight's (one chunk's
    logits in flight, about 0.6 GB on a GPU, are left out); split over tp, the vocabulary-parallel
    loss keeps its input and the fp32 softmax of this rank's slice."""
    tokens = micro_batch * seq
    if tp == 1:
        return (tokens + model.padded_vocab_size) * model.n_embd * dtype_bytes
    return tokens * (model.n_embd * dtype_bytes + FP32 * model.padded_vocab_size / tp)


def activation_bytes(model: ModelConfig, layout: Layout, seq: int, num_micro: int,
                     dtype_bytes: int = BF16) -> float:
    """Activations held at the peak on the most loaded rank. With pipeline 1F1B the first stage
    holds min(pp, micro-batches) micro-batches in flight; checkpointed blocks keep only their
    input, and one block's full activations exist while it is recomputed."""
    b, tp = layout.micro_batch, layout.tp
    layers = math.ceil(model.n_layer / layout.pp)
    full = block_activation_bytes(model, b, seq, tp, dtype_bytes)
    kept_input = b * seq * model.n_embd * dtype_bytes
    checkpointed = layers if layout.activation_checkpoint else 0
    per_micro = checkpointed * kept_input + (layers - checkpointed) * full
    recompute = full if checkpointed else 0
    in_flight = min(layout.pp, num_micro)
    logits = logits_activation_bytes(model, b, seq, tp, dtype_bytes)
    return in_flight * per_micro + recompute + (logits if layout.pp == 1 else 0)


def estimate_memory(model: ModelConfig, layout: Layout, seq: int, num_micro: int) -> Memory:
    n = stage_parameters(model, layout.pp, layout.tp)
    params, grads, optimizer = model_state_bytes(n, layout.dp, layout.zero_stage, BF16_ADAM)
    if layout.offload_optimizer != "none":  # the optimizer steps on the host, the gradients go there
        grads = optimizer = 0.0
    if layout.offload_params != "none":
        params = 0.0
    if layout.zero_stage >= 3:  # the gathered block being computed and the prefetched next one, plus buckets
        buffers = 2 * block_parameters(model, layout.tp) * BF16 + 2 * ZERO3_BUCKET_ELEMENTS * BF16
    else:
        buffers = ZERO3_BUCKET_ELEMENTS * BF16  # the gradient reduction bucket
    return Memory(params, grads, optimizer, activation_bytes(model, layout, seq, num_micro), buffers)


def estimate_step_seconds(model: ModelConfig, layout: Layout, cluster: Cluster, seq: int,
                          global_batch: int) -> float:
    """Compute at a fraction of peak that grows with the micro-batch's tokens (small matmuls
    use a GPU poorly), stretched by recomputation and the pipeline bubble, plus tensor-parallel
    all-reduces (within a node) and whatever data-parallel traffic compute cannot hide."""
    num_micro = global_batch // (layout.dp * layout.micro_batch)
    recompute = 1 / 3 if layout.activation_checkpoint else 0.0  # one more forward: 2N of 6N
    flops = training_flops_per_token(model, seq) * global_batch * seq * (1 + recompute)
    tokens = layout.micro_batch * seq
    efficiency = cluster.efficiency * tokens / (tokens + cluster.half_efficiency_tokens)
    compute = flops / (cluster.gpus * cluster.peak_flops * efficiency)
    compute *= 1 + (layout.pp - 1) / num_micro  # 1F1B bubble

    intra, inter = cluster.intra_node_gbps * 1e9, cluster.inter_node_gbps * 1e9
    tp_bytes = tokens * model.n_embd * BF16
    tp_ring = 2 * (layout.tp - 1) / layout.tp * tp_bytes / intra
    tp_comm = 4 * math.ceil(model.n_layer / layout.pp) * num_micro * tp_ring  # 2 fwd + 2 bwd a block

    n = stage_parameters(model, layout.pp, layout.tp)
    dp_bw = inter if layout.dp * layout.tp * layout.pp > cluster.gpus_per_node else intra
    ring = (layout.dp - 1) / layout.dp * n * BF16 / dp_bw
    if layout.zero_stage >= 3:  # gather for forward and backward, reduce-scatter, every micro-batch
        dp_comm = 3 * ring * num_micro
    elif layout.zero_stage == 2:  # reduce-scatter every micro-batch, all-gather the update once
        dp_comm = ring * (num_micro + 1)
    else:  # all-reduce once per step
        dp_comm = 2 * ring
    offload = offload_seconds(model, layout, cluster, num_micro)
    return compute + tp_comm + max(0.0, dp_comm - compute) + offload


def offload_seconds(model: ModelConfig, layout: Layout, cluster: Cluster, num_micro: int) -> float:
    """What offload adds to a step, not overlapped with compute: gradients to the host and weights
    back over PCIe, CPU Adam, and the folder's reads and writes (16 bytes a parameter each way for
    the optimizer state; the weights for every micro-batch's forward and backward)."""
    n = stage_parameters(model, layout.pp, layout.tp) / layout.dp
    ranks = min(layout.world, cluster.gpus_per_node)  # share a node's CPUs and its drive
    seconds = 0.0
    if layout.offload_optimizer != "none":
        seconds += 2 * BF16 * n / (cluster.pcie_gbps * 1e9) + n * ranks / cluster.cpu_adam_per_s
    if layout.offload_optimizer == "nvme":
        seconds += 2 * 16 * n * ranks / (cluster.nvme_gbps * 1e9)
    if layout.offload_params != "none":
        seconds += 2 * num_micro * BF16 * n / (cluster.pcie_gbps * 1e9)
    if layout.offload_params == "nvme":
        seconds += 2 * num_micro * BF16 * n * ranks / (cluster.nvme_gbps * 1e9)
    return seconds


def candidate_layouts(model: ModelConfig, gpus: int, gpus_per_node: int, global_batch: int
                      ) -> Iterator[Layout]:
    """Every layout megagpt can run: tp within a node dividing the heads and the padded
    vocabulary, pp at most n_layer, any ZeRO stage (inside pipeline stages too), micro-batches
    dividing the global batch."""
    for tp, pp in itertools.product(divisors(gpus), divisors(gpus)):
        if (gpus % (tp * pp) or tp > gpus_per_node or model.n_head % tp or model.padded_vocab_size % tp
                or pp > model.n_layer):
            continue
        dp = gpus // (tp * pp)
        for zero, ac, micro in itertools.product((0, 1, 2, 3), (0, 1), (1, 2, 4, 8, 16, 32)):
            if global_batch % (dp * micro):
                continue
            for optimizer, params in OFFLOADS if zero == 3 and pp == 1 else OFFLOADS[:1]:
                yield Layout(dp, pp, tp, zero, ac, micro, offload_optimizer=optimizer, offload_params=params)


def plan(model: ModelConfig, cluster: Cluster, global_batch: int, seq: int | None = None,
         tp: int | None = None, pp: int | None = None) -> list[Plan]:
    """All candidate layouts (with the given tp and pp, if given) with their estimates, fastest
    fitting ones first."""
    seq = seq or model.block_size
    plans = [estimate(model, layout, cluster, global_batch, seq)
             for layout in candidate_layouts(model, cluster.gpus, cluster.gpus_per_node, global_batch)
             if tp in (None, layout.tp) and pp in (None, layout.pp)]
    return sorted(plans, key=_fastest_fitting)


def estimate(model: ModelConfig, layout: Layout, cluster: Cluster, global_batch: int, seq: int) -> Plan:
    """One layout's memory on its most loaded GPU, step time, and whether it fits."""
    memory = estimate_memory(model, layout, seq, global_batch // (layout.dp * layout.micro_batch))
    step = estimate_step_seconds(model, layout, cluster, seq, global_batch)
    host = offload_bytes(model, layout, on_gpu=True).host * min(layout.world, cluster.gpus_per_node)
    fits = (memory.total <= cluster.gpu_mem_gib * GiB * (1 - cluster.headroom)
            and host <= cluster.host_mem_gib * GiB * (1 - cluster.headroom))
    return Plan(layout, memory, step, fits, host)


def _fastest_fitting(p: Plan) -> tuple:
    # Among equally fast layouts prefer less model parallelism, then the most memory left over.
    return not p.fits, round(p.step_seconds, 2), p.layout.tp * p.layout.pp, p.memory.total


def fastest_zero_stage(model: ModelConfig, layout: Layout, cluster: Cluster, global_batch: int,
                       seq: int | None = None) -> int:
    """The ZeRO stage (1-3) the estimates say runs `layout`'s dp x pp x tp, checkpointing and
    micro-batch fastest within `cluster`'s GPU memory; 3, which shards the most, when none fits.
    (Not 0: megagpt's checkpoints read ZeRO's partitions.)"""
    seq = seq or model.block_size
    plans = [estimate(model, replace(layout, zero_stage=stage), cluster, global_batch, seq)
             for stage in (1, 2, 3)]
    best = min(plans, key=_fastest_fitting)
    return best.layout.zero_stage if best.fits else 3


def format_table(plans: list[Plan], model: ModelConfig, cluster: Cluster, global_batch: int,
                 seq: int, rows: int) -> str:
    tokens = global_batch * seq
    head = (f"{'layout':<70}{'params':>8}{'grads':>8}{'optim':>8}{'activ':>8}{'buffers':>8}"
            f"{'total GiB':>10}{'host GiB':>9}{'step s':>8}{'tokens/s/GPU':>14}")
    lines = [head, "-" * len(head)]
    for p in [p for p in plans if p.fits][:rows]:
        m = p.memory
        lines.append(f"{str(p.layout):<70}" + "".join(
            f"{v / GiB:>8.1f}" for v in (m.params, m.grads, m.optimizer, m.activations, m.buffers))
            + f"{m.total / GiB:>10.1f}{p.host / GiB:>9.1f}{p.step_seconds:>8.2f}"
            + f"{tokens / p.step_seconds / cluster.gpus:>14,.0f}")
    fitting = sum(p.fits for p in plans)
    lines.append(f"{fitting} of {len(plans)} layouts fit in {cluster.gpu_mem_gib:g} GiB a GPU and "
                 f"{cluster.host_mem_gib:g} GiB of host memory a node "
                 f"(minus {cluster.headroom:.0%} headroom)")
    if fitting:
        best = plans[0]
        lines.append(f"recommended: {best.layout} -> parallel.tp={best.layout.tp} "
                     f"parallel.pp={best.layout.pp} parallel.zero_stage={best.layout.zero_stage} "
                     f"parallel.activation_checkpoint={best.layout.activation_checkpoint} "
                     f"train.micro_batch_size={best.layout.micro_batch} "
                     f"train.grad_accum={global_batch // (best.layout.dp * best.layout.micro_batch)}"
                     + "".join(f" parallel.offload_{what}={where}"
                               for what, where in best.layout.offloads().items()))
    else:
        lines.append("nothing fits, offload to host memory or NVMe included: add GPUs, or GPUs or hosts "
                     "with more memory")
    return "\n".join(lines)


def _number(kind: type, low: float, high: float | None = None, *, above: bool = False,
            what: str = "") -> Callable[[str], float]:
    """An argparse type: a finite `kind` at least `low` (`above`: greater than it), at most `high`."""
    interval = f"{'(' if above else '['}{low:g}, {'inf)' if high is None else f'{high:g}]'}"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'an integer' if kind is int else 'a number'} ({what})") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number; {what}: {interval}")
        if not ((value > low if above else value >= low) and (high is None or value <= high)):
            raise argparse.ArgumentTypeError(f"{text} is outside {interval}: {what}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m megagpt.plan", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help=f"a preset: {', '.join(MODEL_PRESETS)}")
    src.add_argument("--config", help="a run config YAML (its model section)")
    count = lambda what: _number(int, 1, what=what)  # noqa: E731
    p.add_argument("--gpus", type=count("the number of GPUs"), required=True)
    p.add_argument("--gpu-mem", type=_number(float, 0, above=True, what="GiB of memory a GPU"), required=True,
                   help="GiB per GPU, e.g. 80")
    p.add_argument("--gpus-per-node", type=count("GPUs a node"), default=8)
    p.add_argument("--gpu", default="H100", help="GPU name for the peak FLOP/s table (default H100)")
    p.add_argument("--global-batch", type=count("sequences a step"), default=None,
                   help="sequences per step (default: GPT-3's Table 2.1 batch, else GPT-2's 512)")
    p.add_argument("--seq", type=count("tokens a sequence"), default=None,
                   help="sequence length (default: block_size)")
    p.add_argument("--efficiency", type=_number(float, 0, 1, above=True, what="the fraction of peak FLOP/s "
                   "large matmuls reach, e.g. 0.5"), default=0.5, help="fraction of peak matmuls reach")
    p.add_argument("--host-mem", type=_number(float, 0, above=True, what="GiB of host memory a node"),
                   default=1024.0, help="GiB of host memory a node, for offload (default 1024)")
    p.add_argument("--nvme-gbps", type=_number(float, 0, above=True, what="GB/s of a node's offload drive"),
                   default=3.0)
    p.add_argument("--inter-node-gbps", type=_number(float, 0, above=True, what="GB/s a GPU between nodes"),
                   default=25.0)
    p.add_argument("--tp", type=count("GPUs a tensor-parallel group"), default=None,
                   help="only layouts with this tensor parallelism (e.g. 1 on GPUs without NVLink)")
    p.add_argument("--pp", type=count("pipeline stages"), default=None,
                   help="only layouts with this many pipeline stages")
    p.add_argument("--rows", type=count("rows of the table"), default=15)
    return p


def _refusals(model: ModelConfig, args: argparse.Namespace, seq: int) -> list[str]:
    """Why the options cannot describe a layout of this model, one reason a line; none when they can."""
    reasons = []
    if seq > model.block_size:
        reasons.append(f"--seq {seq} is longer than the model's block_size {model.block_size} "
                       "(its learned positions end there)")
    if args.tp is not None:
        tp = args.tp
        splits = [(args.gpus, f"--gpus {args.gpus}"), (model.n_head, f"the model's {model.n_head} attention "
                  "heads (tp splits the heads)"), (model.padded_vocab_size, "the padded vocabulary of "
                  f"{model.padded_vocab_size} (tp splits the vocabulary)")]
        reasons += [f"--tp {tp} does not divide {what}; tp dividing it: {_common_divisors(n, model)}"
                    for n, what in splits if n % tp]
        if tp > args.gpus_per_node:
            reasons.append(f"--tp {tp} is more than --gpus-per-node {args.gpus_per_node} (tensor-parallel "
                           "all-reduces stay within a node)")
    if args.pp is not None:
        if args.pp > model.n_layer:
            reasons.append(f"--pp {args.pp} is more stages than the model's {model.n_layer} layers")
        if args.gpus % (args.pp * (args.tp or 1)):
            reasons.append(f"--pp {args.pp}{f' x --tp {args.tp}' if args.tp else ''} does not divide "
                           f"--gpus {args.gpus}")
    return reasons


def _common_divisors(n: int, model: ModelConfig) -> str:
    fits = [d for d in divisors(n) if model.n_head % d == 0 and model.padded_vocab_size % d == 0]
    return ", ".join(map(str, fits))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        model = ModelConfig.preset(args.model) if args.model else load_config(args.config).model
    except ConfigError as err:
        print(f"megagpt.sizing.planner: {err}", file=sys.stderr)
        return 2
    if args.global_batch is None:
        args.global_batch = GPT3_RECIPES.get(args.model, (512, None))[0]
    peak = device_peak_flops(args.gpu)
    if peak is None:
        print(f"megagpt.plan: unknown --gpu {args.gpu!r}; the known ones are in megagpt/sizing/flops.py",
              file=sys.stderr)
        return 2
    seq = args.seq or model.block_size
    refusals = _refusals(model, args, seq)
    if refusals:
        print("megagpt.plan: error: " + "\n  ".join(refusals), file=sys.stderr)
        return 2
    cluster = Cluster(args.gpus, args.gpu_mem, args.gpus_per_node, peak, args.efficiency,
                      inter_node_gbps=args.inter_node_gbps, host_mem_gib=args.host_mem,
                      nvme_gbps=args.nvme_gbps)
    plans = plan(model, cluster, args.global_batch, seq, args.tp, args.pp)
    if not plans:
        print(f"megagpt.plan: error: no layout of {args.gpus} GPUs runs --global-batch {args.global_batch}: "
              "it must be a multiple of dp x micro-batch (dp = GPUs / (tp x pp), micro-batches of 1-32 "
              "sequences)", file=sys.stderr)
        return 2
    n_params = stage_parameters(model, 1, 1)
    print(f"{args.model or args.config}: {n_params / 1e9:.2f}B parameters (vocab padded), "
          f"{args.gpus} x {args.gpu} {args.gpu_mem:g} GiB, global batch {args.global_batch} x {seq} tokens"
          + ("" if model.attention == "dense" else
             f", attention {model.attention} (banded layers: window {model.local_window})"))
    print(format_table(plans, model, cluster, args.global_batch, seq, args.rows))
    return 0
