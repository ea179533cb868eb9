"""A rank's share of the training state as DCP pieces: its ZeRO range of its tp slice of each
parameter's fp32 weight and Adam moments, as rectangles of the one-process tensor."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.utils import (
    safe_get_local_fp32_param,
    safe_get_local_optimizer_state,
    safe_set_local_fp32_param,
    safe_set_local_optimizer_state,
)
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    MetadataIndex,
    TensorProperties,
)
from torch.distributed.checkpoint.planner import (
    LoadPlan,
    ReadItem,
    SavePlan,
    TensorWriteData,
    WriteItem,
    WriteItemType,
)
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

from megagpt.checkpoint.folders import CheckpointError
from megagpt.parallel.topology import Topology

STATES = ("param", "exp_avg", "exp_avg_sq")  # fp32 master weight and Adam's moments, per parameter


def _local_parameters(engine: deepspeed.DeepSpeedEngine) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """This rank's parameters with their one-process names (a pipeline stage's StageGPT names them so)."""
    yield from engine.module.named_parameters()


@dataclasses.dataclass
class Pieces:
    """A rank's part of one state (weight or moment) of one parameter: rectangles of the
    one-process tensor of shape `shape`, keyed by their offsets in it. `flat` is the rank's
    contiguous range that the rectangles are views of (what a load writes back to DeepSpeed)."""

    shape: torch.Size
    flat: torch.Tensor
    rectangles: dict[tuple[int, ...], torch.Tensor]

    def chunks(self) -> list[ChunkStorageMetadata]:
        return [ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=view.shape)
                for offsets, view in self.rectangles.items()]


def rectangles(flat: torch.Tensor, start: int, local_shape: tuple[int, ...], split: tuple[int, int] | None,
               tp_rank: int, tp_size: int) -> dict[tuple[int, ...], torch.Tensor]:
    """`flat`, elements [start, start + len) of this rank's row-major tp slice of shape local_shape,
    as views shaped like rectangles of the one-process tensor, keyed by their offsets there.

    A range of a matrix is a partial row, whole rows and a partial row. The tp slice (take_split)
    holds, of each of `parts` equal blocks along `dim`, the tp_rank-th of tp_size pieces, so a
    rectangle crossing a block boundary along `dim` is cut there."""
    end = start + flat.numel()
    local: list[tuple[tuple[int, ...], torch.Tensor]] = []
    if len(local_shape) == 1:
        if end > start:
            local.append(((start,), flat))
    else:
        cols = local_shape[1]
        pos = start
        while pos < end:
            row, col = divmod(pos, cols)
            if col or end - pos < cols:  # a partial row
                span = min(cols - col, end - pos)
                local.append(((row, col), flat[pos - start:pos - start + span].view(1, span)))
            else:  # whole rows
                span = (end - pos) // cols * cols
                local.append(((row, 0), flat[pos - start:pos - start + span].view(-1, cols)))
            pos += span
    if split is None:
        return dict(local)
    dim, parts = split
    block = local_shape[dim] // parts
    out = {}
    for offsets, view in local:
        lo, hi = offsets[dim], offsets[dim] + view.shape[dim]
        while lo < hi:
            b = lo // block
            upto = min(hi, (b + 1) * block)
            where = list(offsets)
            where[dim] = b * block * tp_size + tp_rank * block + lo - b * block
            out[tuple(where)] = view.narrow(dim, lo - offsets[dim], upto - lo)
            lo = upto
    return out


def sharded_state(engine: deepspeed.DeepSpeedEngine, topo: Topology, copy_to_host: bool,
                  for_load: bool = False) -> dict[str, Pieces]:
    """This rank's fp32 weights and Adam moments as Pieces, keyed "param.NAME", "exp_avg.NAME",
    "exp_avg_sq.NAME" by one-process name. For saving (for_load False) a parameter replicated over
    tp (LayerNorms, row-parallel biases) is taken from tp rank 0 only and the tied embedding from
    the first stage only: each piece is written once. `copy_to_host` copies the pieces to host
    memory (async save: training goes on changing the originals). Creates Adam's state where torch
    has not yet (a resume before the first step): a load needs somewhere to put the moments."""
    _link_adam_state(engine)
    tp_size = topo.layout.tp
    state: dict[str, Pieces] = {}
    for name, param in _local_parameters(engine):
        split = getattr(param, "tp_split", None)
        if not for_load and ((split is None and topo.tp_rank) or (name.startswith("transformer.wte.")
                                                                   and topo.pp_rank)):
            continue
        local_shape = tuple(getattr(param, "ds_shape", param.shape))
        shape = list(local_shape)
        if split is not None:
            shape[split[0]] *= tp_size
        for key in STATES:
            start, flat = _local_range(param, key, name)
            if copy_to_host or (for_load and hasattr(param, "ds_tensor")):
                # A host copy to write from, or (ZeRO-3) to read into and hand to DeepSpeed in install:
                # its getter returns a copy, not its storage, where the fp32 state is offloaded.
                flat = flat.to("cpu", copy=True)
            pieces = rectangles(flat, start, local_shape, split, topo.tp_rank, tp_size)
            state[f"{key}.{name}"] = Pieces(torch.Size(shape), flat, pieces)
    return state


def _local_range(param: torch.nn.Parameter, key: str, name: str) -> tuple[int, torch.Tensor]:
    """(start, values): this rank's ZeRO range of `param`'s (tp-local, flattened) fp32 weight or
    Adam moment `key`, padding cut."""
    if hasattr(param, "ds_tensor"):  # ZeRO-3: equal ceil-sized partitions, the last one padded
        size = param.ds_tensor.ds_numel
        start = min(param.ds_numel, size * dist.get_rank(group=param.ds_process_group))
        return start, _get_local(param, key)[: min(size, param.ds_numel - start)]
    mapping = getattr(param, "_hp_mapping", None)  # ZeRO-1/2: a fragment of the flat partition, or none
    if mapping is None:
        if hasattr(param, "_hp_mapping"):
            return 0, torch.empty(0)
        raise CheckpointError(f"{name}: no ZeRO fp32 state to checkpoint; megagpt checkpoints ZeRO stages "
                              "1-3: set parallel.zero_stage to 1, 2, 3 or auto")
    value = mapping.hp_fragment if key == STATES[0] else mapping.get_optim_state_fragment(key)
    return mapping.lp_fragment_address.start, value.flatten()


def install(engine: deepspeed.DeepSpeedEngine, state: dict[str, Pieces]) -> None:
    """After a load into `state`: hand ZeRO-3's fp32 ranges to DeepSpeed, and refresh the model's own
    (bf16 on a GPU) weights from the fp32 ones, which the optimizer does not do until its next step.
    ZeRO-1/2's ranges were views of DeepSpeed's storage: loaded in place."""
    for name, param in _local_parameters(engine):
        if not hasattr(param, "ds_tensor"):
            continue
        for key in STATES:
            loaded = state[f"{key}.{name}"].flat
            padded = _get_local(param, key).detach().clone()  # the setters take the padded partition
            padded[: loaded.numel()].copy_(loaded)
            if key == STATES[0]:
                safe_set_local_fp32_param(param, padded)
                # The partition the forward gathers: the setter updates only the fp32 master.
                param.ds_tensor.data.copy_(padded.to(param.ds_tensor.device, param.ds_tensor.dtype))
            else:
                safe_set_local_optimizer_state(param, padded, key)
    if hasattr(engine.optimizer, "update_lp_params"):  # ZeRO-1/2: fp32 partitions -> all weights
        engine.optimizer.update_lp_params()


def _get_local(param: torch.nn.Parameter, key: str) -> torch.Tensor:
    """ZeRO-3's padded partition of `param`'s fp32 weight or Adam moment `key`."""
    if key == STATES[0]:
        return safe_get_local_fp32_param(param)
    return safe_get_local_optimizer_state(param, key)


class PiecesSavePlanner(DefaultSavePlanner):
    """DCP's default planner, writing each Pieces entry as its rectangles of the one-process tensor."""

    def __init__(self):
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)

    def create_local_plan(self) -> SavePlan:
        items = []
        for fqn, pieces in self.state_dict.items():
            properties = TensorProperties(dtype=pieces.flat.dtype)
            items += [WriteItem(index=MetadataIndex(fqn, chunk.offsets), type=WriteItemType.SHARD,
                                tensor_data=TensorWriteData(chunk, properties, pieces.shape))
                      for chunk in pieces.chunks()]
        self.plan = SavePlan(items)
        return self.plan

    def resolve_data(self, write_item: WriteItem) -> torch.Tensor:
        return self.state_dict[write_item.index.fqn].rectangles[tuple(write_item.index.offset)]


class PiecesLoadPlanner(DefaultLoadPlanner):
    """DCP's default planner, reading into each Pieces entry the parts of the saved pieces that
    overlap its rectangles (and nothing else)."""

    def __init__(self):
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)

    def set_up_planner(self, state_dict: dict[str, Pieces], metadata: Any = None,
                       is_coordinator: bool = False) -> None:
        # The default's set-up deep-copies values it does not know (Pieces): they must stay views.
        self.state_dict = self.original_state_dict = state_dict
        self.metadata, self.is_coordinator = metadata, is_coordinator

    def create_local_plan(self) -> LoadPlan:
        saved = self.metadata.state_dict_metadata
        items: list[ReadItem] = []
        for fqn, pieces in self.state_dict.items():
            md = saved.get(fqn)
            if md is None or tuple(md.size) != tuple(pieces.shape):
                got = "nothing" if md is None else f"shape {tuple(md.size)}"
                raise CheckpointError(f"the checkpoint holds {got} for {fqn}, this model has shape "
                                      f"{tuple(pieces.shape)}: resume with the model it was saved with")
            items += create_read_items_for_chunk_list(fqn, md, pieces.chunks())
        return LoadPlan(items)

    def resolve_tensor(self, read_item: ReadItem) -> torch.Tensor:
        index = read_item.dest_index
        rectangle = self.state_dict[index.fqn].rectangles[tuple(index.offset)]
        return self.transform_tensor(read_item, rectangle)  # the part of it this read fills


def _link_adam_state(engine: deepspeed.DeepSpeedEngine) -> None:
    """Make Adam's state exist for every flat fp32 partition and DeepSpeed's per-parameter views of
    it point there. torch's AdamW creates its state at the first step (a run resumed under another
    layout has not stepped yet), and DeepSpeed 0.19's ZeRO-1/2 links the views once, inside the
    first param group's first step, when the second group (biases, LayerNorms) has no state yet."""
    zero = engine.optimizer
    # ZeRO-3 steps its fp32 partitions by swapping them into the param groups one at a time.
    flats = [p for group in zero.optimizer.param_groups for p in group["params"]]
    for flat in flats + list(getattr(zero, "fp32_partitioned_groups_flat", [])):
        state = zero.optimizer.state[flat]
        if not state:
            state.update(step=torch.zeros(()), exp_avg=torch.zeros_like(flat),
                         exp_avg_sq=torch.zeros_like(flat))
    if hasattr(zero, "_lazy_init_hp_params_optimizer_state"):  # ZeRO-1/2 (ZeRO-3 looks states up)
        zero._hp_optimizer_states_linked = False
        zero._lazy_init_hp_params_optimizer_state()


def adam_step(engine: deepspeed.DeepSpeedEngine) -> float:
    steps = {float(state["step"]) for state in engine.optimizer.optimizer.state.values()}
    if len(steps) != 1:
        raise RuntimeError(f"Adam's step counts differ between parameter groups: {sorted(steps)}")
    return steps.pop()
