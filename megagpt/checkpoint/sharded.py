"""A rank's share of the training state as DCP pieces: its ZeRO range of its tp slice of each
parameter's fp32 weight and Adam moments, as rectangles of the one-process tensor."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import deepspeed
import torch
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
from megagpt.checkpoint.zero_states import (
    STATES,
    SubGroupStates,
    by_position,
    link_adam_state,
    local_range,
    zero_states,
)
from megagpt.parallel.topology import Topology


def _local_parameters(engine: deepspeed.DeepSpeedEngine) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """This rank's parameters with their one-process names (a pipeline stage's StageGPT names them so)."""
    yield from engine.module.named_parameters()


@dataclasses.dataclass
class Pieces:
    """A rank's part of one state (weight or moment) of one parameter, as rectangles of the
    one-process tensor of shape `shape`: `flat()` is the rank's contiguous range (elements `start`
    on of its tp slice of shape `local_shape`), fetched when DCP writes or reads it, which under
    ZeRO-3 swaps in its optimizer sub-group; the rectangles are views of it."""

    shape: torch.Size
    dtype: torch.dtype
    numel: int
    start: int
    local_shape: tuple[int, ...]
    split: tuple[int, int] | None
    tp_rank: int
    tp_size: int
    flat: Callable[[], torch.Tensor]
    states: SubGroupStates | None = None  # ZeRO-3's sub-group walker that flat() goes through

    def rectangles(self, flat: torch.Tensor | None = None) -> dict[tuple[int, ...], torch.Tensor]:
        flat = self.flat() if flat is None else flat
        return rectangles(flat, self.start, self.local_shape, self.split, self.tp_rank, self.tp_size)

    def chunks(self) -> list[ChunkStorageMetadata]:
        shapes = self.rectangles(torch.empty(self.numel, dtype=self.dtype, device="meta"))
        return [ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=view.shape)
                for offsets, view in shapes.items()]


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
    "exp_avg_sq.NAME" by one-process name, in the order their states lie in memory (under ZeRO-3:
    sub-group by sub-group, so a save or load visits each once). For saving (for_load False) a
    parameter replicated over tp (LayerNorms, row-parallel biases) is taken from tp rank 0 only and
    the tied embedding from the first stage only: each piece is written once. `copy_to_host` copies
    the pieces to host memory now (async save: training goes on changing the originals). Creates
    Adam's state where torch has not yet (a resume before the first step): a load needs somewhere
    to put the moments."""
    link_adam_state(engine)
    states = zero_states(engine)
    state: dict[str, Pieces] = {}
    for name, param in by_position(list(_local_parameters(engine)), states):
        split = getattr(param, "tp_split", None)
        if not for_load and ((split is None and topo.tp_rank) or (name.startswith("transformer.wte.")
                                                                   and topo.pp_rank)):
            continue
        local_shape = tuple(getattr(param, "ds_shape", param.shape))
        shape = list(local_shape)
        if split is not None:
            shape[split[0]] *= topo.layout.tp
        for key in STATES:
            start, flat = local_range(param, key, name, states)
            fetch = _fetcher(param, key, name, states, flat, copy_to_host, for_load)
            state[f"{key}.{name}"] = Pieces(torch.Size(shape), flat.dtype, flat.numel(), start, local_shape,
                                            split, topo.tp_rank, topo.layout.tp, fetch, states)
    if states is not None:
        states.put_away()
    return state


def _fetcher(param: torch.nn.Parameter, key: str, name: str, states: SubGroupStates | None,
             flat: torch.Tensor, copy_to_host: bool, for_load: bool) -> Callable[[], torch.Tensor]:
    """How DCP reaches a piece: a host copy taken now, ZeRO-1/2's range (always in memory), or
    ZeRO-3's range fetched through its sub-group when DCP gets to it."""
    if copy_to_host:
        copy = flat.to("cpu", copy=True)
        return lambda: copy
    if states is None:
        return lambda: flat
    return lambda: local_range(param, key, name, _Writing(states) if for_load else states)[1]


class _Writing:
    """SubGroupStates as seen by a load: every view handed out is written to."""

    def __init__(self, states: SubGroupStates):
        self.states = states

    def view(self, param: torch.nn.Parameter, key: str) -> torch.Tensor:
        return self.states.view(param, key, for_write=True)


def release(state: dict[str, Pieces]) -> None:
    """After a save or load through `state`: the ZeRO-3 sub-group DCP reached last put away. Left
    swapped in, it holds the optimizer's swap buffers and the next step cannot swap its own in."""
    for states in {id(p.states): p.states for p in state.values() if p.states is not None}.values():
        states.put_away()


def install(engine: deepspeed.DeepSpeedEngine, state: dict[str, Pieces]) -> None:
    """After a load into `state`: ZeRO-3's last sub-group written back (each refreshes the model's
    own, bf16 on a GPU, weights from its fp32 ones as it is put away); ZeRO-1/2's ranges were views
    of DeepSpeed's storage, loaded in place, and the model's weights are refreshed from them here
    (the optimizer does not do it until its next step)."""
    release(state)
    if hasattr(engine.optimizer, "update_lp_params"):  # ZeRO-1/2: fp32 partitions -> all weights
        engine.optimizer.update_lp_params()


class PiecesSavePlanner(DefaultSavePlanner):
    """DCP's default planner, writing each Pieces entry as its rectangles of the one-process tensor."""

    def __init__(self):
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)

    def create_local_plan(self) -> SavePlan:
        items = []
        for fqn, pieces in self.state_dict.items():
            properties = TensorProperties(dtype=pieces.dtype)
            items += [WriteItem(index=MetadataIndex(fqn, chunk.offsets), type=WriteItemType.SHARD,
                                tensor_data=TensorWriteData(chunk, properties, pieces.shape))
                      for chunk in pieces.chunks()]
        self.plan = SavePlan(items)
        return self.plan

    def resolve_data(self, write_item: WriteItem) -> torch.Tensor:
        return self.state_dict[write_item.index.fqn].rectangles()[tuple(write_item.index.offset)]


class PiecesLoadPlanner(DefaultLoadPlanner):
    """DCP's default planner, reading into each Pieces entry the parts of the saved pieces that
    overlap its rectangles (and nothing else), in the order of `order` (the keys as sharded_state
    made them: ZeRO-3 sub-group by sub-group). dcp.load sorts the keys by name, which alternates
    between sub-groups (a Block's weights, then its biases): with the optimizer on NVMe each
    alternation swaps a whole sub-group out and in, 1.6 GB each way at GPT-2 XL."""

    def __init__(self, order: list[str]):
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self.order = order

    def set_up_planner(self, state_dict: dict[str, Pieces], metadata: Any = None,
                       is_coordinator: bool = False) -> None:
        # The default's set-up deep-copies values it does not know (Pieces): they must stay views.
        self.state_dict = self.original_state_dict = state_dict
        self.metadata, self.is_coordinator = metadata, is_coordinator

    def create_local_plan(self) -> LoadPlan:
        saved = self.metadata.state_dict_metadata
        items: list[ReadItem] = []
        for fqn in self.order:
            pieces = self.state_dict[fqn]
            md = saved.get(fqn)
            if md is None or tuple(md.size) != tuple(pieces.shape):
                got = "nothing" if md is None else f"shape {tuple(md.size)}"
                raise CheckpointError(f"the checkpoint holds {got} for {fqn}, this model has shape "
                                      f"{tuple(pieces.shape)}: resume with the model it was saved with")
            items += create_read_items_for_chunk_list(fqn, md, pieces.chunks())
        return LoadPlan(items)

    def resolve_tensor(self, read_item: ReadItem) -> torch.Tensor:
        index = read_item.dest_index
        rectangle = self.state_dict[index.fqn].rectangles()[tuple(index.offset)]
        return self.transform_tensor(read_item, rectangle)  # the part of it this read fills
