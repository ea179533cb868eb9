"""Pipeline parallelism with any ZeRO stage: each rank's pipeline stage in one ordinary DeepSpeed
engine over the stage's data-parallel group, driven by megagpt's own 1F1B schedule.

DeepSpeed's PipelineEngine refuses ZeRO-2/3. Here DeepSpeed sees no pipeline at all: a stage is a
plain module (`StageGPT`) in a plain `DeepSpeedEngine` (ZeRO 0-3 over the stage's dp group, the
`mpu` being the run's grid), and `PipelineStage` runs the micro-batches through the stages,
sending activations forward and their gradients backward between neighbouring stages with
point-to-point messages. What that takes (the traps, each fixed where it is marked):

(a) ZeRO-3's parameter coordinator checks its recorded trace with broadcasts over the WORLD group;
    stages never enter that check together, so the first forward would hang. The check runs over
    the stage's dp group instead (`_check_traces_within`).
(b) Every forward goes through `engine(...)` (ZeRO-3's hooks come from engine.forward) and every
    backward through `engine.backward` - a stage before the last one backpropagates the received
    gradient g of its output y as the scalar sum(y * g), whose gradient with respect to y is g.
(c) engine.backward divides by the accumulation steps; only the last stage's loss is divided, the
    gradients it sends back already are (`scale_wrt_gas=False` before the last stage).
(d) The grid gives the engine the stage's dp group and a model-parallel group spanning the pipe
    and tensor ranks, so the gradient norm for clipping sums over all stages; `_mark_for_norm`
    makes it count each gradient once (tp-replicated parameters on tp rank 0, the tied embedding
    on the first stage only).
(e) With several micro-batches in flight on a stage (1F1B's warm-up), ZeRO's post-backward
    bookkeeping is reset only at the next forward, which here may come after the next backward:
    `clear_backward_seen_flag()` before each backward keeps the sequential F B F B bookkeeping.
    It is private; tests/parallel/test_stage_pipeline.py pins it.

The tied token embedding lives on the first stage (lookup) and the last (LM head); their
gradients are summed over that pair of ranks at the accumulation boundary, before the step.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import deepspeed
import torch
import torch.distributed as dist
import torch.nn as nn
from deepspeed.accelerator import get_accelerator
from deepspeed.runtime.zero import partitioned_param_coordinator
from deepspeed.utils import safe_get_full_grad, safe_get_local_grad, safe_set_full_grad, safe_set_local_grad

from megagpt.config import ConfigError, ModelConfig
from megagpt.model.gpt import Block, Embedding, Layers, LayerSeeds, checkpointed_blocks, run_blocks, seeded
from megagpt.parallel.topology import Topology

Batch = tuple[torch.Tensor, torch.Tensor]


def stage_blocks(n_layer: int, stages: int, stage: int) -> range:
    """The transformer blocks of `stage`: equal shares, the earlier stages one more when uneven
    (the first and last stages also hold the tied embedding, so they are not lighter)."""
    base, extra = divmod(n_layer, stages)
    start = stage * base + min(stage, extra)
    return range(start, start + base + (stage < extra))


class StageGPT(nn.Module):
    """Stage `stage` of `stages` of GPT(config, layers), its parameters named as in the one-process
    model: the first stage embeds token ids, the last ends with ln_f and the LM head (tied to its
    own copy of wte) and returns the loss; between them, blocks `stage_blocks(...)`."""

    def __init__(self, config: ModelConfig, layers: Layers, stage: int, stages: int):
        super().__init__()
        self.config, self.stage, self.stages = config, stage, stages
        self.is_first, self.is_last = stage == 0, stage == stages - 1
        seeds = LayerSeeds.draw(config.n_layer)  # the one-process model's: its layers' weights here
        self.transformer = nn.ModuleDict()
        if self.is_first or self.is_last:
            self.transformer["wte"] = seeded(seeds.wte, partial(layers.embedding, config.padded_vocab_size,
                                                                config.n_embd))
        if self.is_first:
            self.transformer["wpe"] = seeded(seeds.wpe, partial(Embedding, config.block_size, config.n_embd))
            self.drop = nn.Dropout(config.dropout)
        blocks = stage_blocks(config.n_layer, stages, stage)
        self.transformer["h"] = nn.ModuleDict({
            str(i): seeded(seeds.blocks[i], partial(Block, config, layers, config.layer_attention[i]))
            for i in blocks})
        if self.is_last:
            if config.arch == "gpt2":
                self.transformer["ln_f"] = nn.LayerNorm(config.n_embd, bias=config.bias)
            self.lm_head = layers.lm_head(config.n_embd, config.padded_vocab_size, config.vocab_size)
            self.lm_head.weight = self.transformer["wte"].weight  # tied input/output embedding
        torch.manual_seed(seeds.after)
        self.checkpoint_blocks = 0  # as Transformer.checkpoint_blocks

    def forward(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Token ids (first stage) or the previous stage's hidden states in; hidden states out, or
        on the last stage the mean cross-entropy against `targets`."""
        t = self.transformer
        if self.is_first:
            x = self.drop(t["wte"](x) + t["wpe"](torch.arange(x.size(1), device=x.device)))
        blocks = list(t["h"].values())
        if self.checkpoint_blocks and self.training:
            x = checkpointed_blocks(blocks, x, self.checkpoint_blocks)
        else:
            x = run_blocks(blocks, x)
        if not self.is_last:
            return x
        if "ln_f" in t:
            x = t["ln_f"](x)
        return self.lm_head(x, targets)


def build_stage(config: ModelConfig, layers: Layers, topo: Topology, ds_config: dict) -> StageGPT:
    """This rank's stage, ZeRO-3 partitioned over its dp group as it is built when the config asks."""
    with deepspeed.zero.Init(config_dict_or_path=ds_config, enabled=topo.layout.zero_stage == 3,
                             data_parallel_group=topo.dp_group, mpu=topo.mpu):
        model = StageGPT(config, layers, topo.pp_rank, topo.layout.pp)
    model.checkpoint_blocks = topo.layout.activation_checkpoint
    _mark_for_norm(model, topo)
    return model


def _mark_for_norm(model: StageGPT, topo: Topology) -> None:
    """Mark which parameters count in the gradient norm here (trap d), so that each gradient counts
    once: tp slices on every rank, tp-replicated parameters on tp rank 0 of each stage, the tied
    embedding on the first stage only. DeepSpeed counts a parameter marked model-parallel on every
    rank, an unmarked one only where its `model_parallel_rank` is 0: ZeRO-3 takes that rank in the
    grid's pipe x tp group (first stage, tp rank 0), ZeRO-1/2 in the tp group; ZeRO-1/2 skip a
    parameter marked `ds_pipe_replicated` (as DeepSpeed's PipelineModule marks its tied copies)."""
    tied = model.transformer["wte"].weight if model.is_last and not model.is_first else None
    for param in model.parameters():
        if param is tied:
            param.tensor_model_parallel = param.model_parallel = False
            param.ds_pipe_replicated = True
        elif not getattr(param, "tensor_model_parallel", False):
            param.model_parallel = topo.tp_rank == 0


def _check_traces_within(group: dist.ProcessGroup) -> None:
    """Trap (a): ZeRO-3's coordinator compares its recorded module/parameter trace with global
    rank 0's over the world group; a stage's trace is compared within its dp group instead (the
    ranks that run the same stage). One stage per process, so one replacement per process."""
    device = get_accelerator().current_device_name()
    src = dist.get_global_rank(group, 0)

    def assert_ints_same_within_stage(ints: list[int]) -> None:
        length = torch.tensor([len(ints)], dtype=torch.long, device=device)
        dist.broadcast(length, src=src, group=group)
        if length.item() != len(ints):
            raise RuntimeError(f"ZeRO-3 trace of rank {dist.get_rank()} has {len(ints)} entries, "
                               f"rank {src} of its stage {length.item()}")
        values = torch.tensor(ints, dtype=torch.long, device=device)
        dist.broadcast(values, src=src, group=group)
        if values.tolist() != list(ints):
            raise RuntimeError(f"ZeRO-3 trace of rank {dist.get_rank()} differs from rank {src}'s "
                               "of its stage")

    partitioned_param_coordinator.assert_ints_same_as_other_ranks = assert_ints_same_within_stage


def one_f_one_b(stage: int, stages: int, micro_batches: int) -> list[tuple[str, int]]:
    """The 1F1B order of a stage: ("F", i) forward and ("B", i) backward of micro-batch i. A stage
    runs ahead by as many forwards as stages follow it, then alternates, then drains the backwards;
    at most `stages - stage` micro-batches' activations are held at once."""
    warmup = min(stages - stage - 1, micro_batches)
    order = [("F", i) for i in range(warmup)]
    for i in range(micro_batches - warmup):
        order += [("F", warmup + i), ("B", i)]
    return order + [("B", i) for i in range(micro_batches - warmup, micro_batches)]


class PipelineStage:
    """This rank's stage engine with the interface of DeepSpeed's PipelineEngine that megagpt uses:
    train_batch / eval_batch return the mean loss on every stage. Everything else (global_steps,
    get_lr, optimizer, module, lr_scheduler, ...) is the stage's DeepSpeedEngine's."""

    def __init__(self, engine: deepspeed.DeepSpeedEngine, topo: Topology):
        if engine.fp16_enabled():
            # engine.backward multiplies by the loss scale, and a stage before the last would
            # scale the received gradient, already scaled by the last stage's loss, again.
            raise ConfigError("fp16 loss scaling with parallel.pp > 1 is not supported by megagpt's "
                              "pipeline schedule: use bf16 (train.precision) or fp32, or pp=1")
        # Set before anything else: __getattr__ looks attributes up on self.engine.
        object.__setattr__(self, "engine", engine)
        self.topo = topo
        self.model: StageGPT = engine.module
        layout, coord = topo.layout, dict(data=topo.dp_rank, model=topo.tp_rank)
        stage, self.stages = topo.pp_rank, layout.pp
        rank = topo.ds_topology.get_rank
        self.prev = rank(pipe=stage - 1, **coord) if stage > 0 else None
        self.next = rank(pipe=stage + 1, **coord) if stage < self.stages - 1 else None
        self.last_stage_rank = rank(pipe=self.stages - 1, **coord)
        self.pipe_group = topo.mpu.get_pipe_parallel_group()
        self.tied_group = _tied_embedding_group(topo)
        self.dtype = torch.bfloat16 if engine.bfloat16_enabled() else torch.float32
        self.sends: list[dist.Work] = []
        if layout.zero_stage == 3:
            _check_traces_within(topo.dp_group)

    def __getattr__(self, name: str):
        return getattr(self.engine, name)

    def __setattr__(self, name: str, value) -> None:
        # checkpoint.load sets global_steps and global_samples: those are the engine's.
        if name in ("global_steps", "global_samples"):
            setattr(self.engine, name, value)
        else:
            object.__setattr__(self, name, value)

    def train_batch(self, data_iter: Iterator[Batch]) -> torch.Tensor:
        """One optimizer step over gradient_accumulation_steps() micro-batches drawn from
        `data_iter` (every stage draws them all: the first uses the inputs, the last the targets);
        the mean loss, known on every stage."""
        micro = [next(data_iter) for _ in range(self.engine.gradient_accumulation_steps())]
        inputs: dict[int, torch.Tensor] = {}
        outputs: dict[int, torch.Tensor] = {}
        total = torch.zeros((), device=self.engine.device)
        self.engine.train()
        for kind, i in one_f_one_b(self.topo.pp_rank, self.stages, len(micro)):
            if kind == "F":
                inputs[i], outputs[i] = self._forward(*micro[i], requires_grad=True)
                if self.model.is_last:
                    total += outputs[i].detach()
            else:
                self._backward(inputs.pop(i), outputs.pop(i), micro[i][0].shape,
                               is_boundary=i == len(micro) - 1)
        self._wait_sends()
        return self._from_last_stage(total / len(micro))

    @torch.no_grad()
    def eval_batch(self, data_iter: Iterator[Batch], num_micro_batches: int) -> torch.Tensor:
        """The mean loss of `num_micro_batches` micro-batches from `data_iter`, known on every stage."""
        total = torch.zeros((), device=self.engine.device)
        self.engine.eval()
        for _ in range(num_micro_batches):
            _, out = self._forward(*next(data_iter), requires_grad=False)
            if self.model.is_last:
                total += out
        self.engine.train()
        self._wait_sends()
        return self._from_last_stage(total / num_micro_batches)

    def _forward(self, x: torch.Tensor, y: torch.Tensor, requires_grad: bool
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the stage's input, its output): hidden states sent on, or on the last stage the loss."""
        device = self.engine.device
        if self.model.is_first:
            inp = x.to(device)
        else:
            inp = self._recv(self.prev, self._hidden_shape(x.shape)).requires_grad_(requires_grad)
        out = self.engine(inp, y.to(device))
        if not self.model.is_last:
            self._send(out.detach(), self.next)
        return inp, out

    def _backward(self, inp: torch.Tensor, out: torch.Tensor, batch_shape: torch.Size,
                  is_boundary: bool) -> None:
        self.engine.optimizer.clear_backward_seen_flag()  # trap (e)
        if self.model.is_last:
            self.engine.backward(out)  # divided by the accumulation steps here, and only here (c)
        else:
            grad = self._recv(self.next, self._hidden_shape(batch_shape))
            self.engine.backward((out * grad).sum(), scale_wrt_gas=False)  # d/d(out) = grad (b)
        if not self.model.is_first:
            self._send(inp.grad, self.prev)
        if is_boundary:
            self._sum_tied_embedding_grad()
        self.engine.step()  # updates only at the accumulation boundary

    def _sum_tied_embedding_grad(self) -> None:
        """The first stage's lookup and the last stage's LM head share wte: once both gradients are
        reduced over dp, each of the pair of ranks holding the same slice takes their sum."""
        if self.tied_group is None:
            return
        param = self.model.transformer["wte"].weight
        if hasattr(param, "ds_id"):  # ZeRO-3: this rank's partition (the same range on both stages)
            grad = safe_get_local_grad(param).clone()
            dist.all_reduce(grad, group=self.tied_group)
            safe_set_local_grad(param, grad)
        else:
            grad = safe_get_full_grad(param).clone()
            dist.all_reduce(grad, group=self.tied_group)
            safe_set_full_grad(param, grad)

    def _hidden_shape(self, batch_shape: torch.Size) -> tuple[int, ...]:
        return (*batch_shape, self.model.config.n_embd)

    def _recv(self, src: int, shape: tuple[int, ...]) -> torch.Tensor:
        buffer = torch.empty(shape, dtype=self.dtype, device=self.engine.device)
        dist.recv(buffer, src=src)  # waits at most the process group's timeout (fault.collective_timeout_s)
        return buffer

    def _send(self, tensor: torch.Tensor, dst: int) -> None:
        # Asynchronous: a blocking send can deadlock 1F1B, where neighbours send to each other.
        tensor = tensor.contiguous()
        self.sends.append((dist.isend(tensor, dst=dst), tensor))

    def _wait_sends(self) -> None:
        for work, _ in self.sends:
            work.wait()
        self.sends.clear()

    def _from_last_stage(self, value: torch.Tensor) -> torch.Tensor:
        dist.broadcast(value, src=self.last_stage_rank, group=self.pipe_group)
        return value


def _tied_embedding_group(topo: Topology) -> dist.ProcessGroup | None:
    """This rank's group of {first stage, last stage} ranks with its dp and tp coordinates (None on
    a middle stage). Every rank creates every group, in one order, as torch requires."""
    layout, mine = topo.layout, None
    for dp in range(layout.dp):
        for tp in range(layout.tp):
            ranks = [topo.ds_topology.get_rank(pipe=pipe, data=dp, model=tp) for pipe in (0, layout.pp - 1)]
            group = dist.new_group(ranks)
            if dist.get_rank() in ranks:
                mine = group
    return mine

