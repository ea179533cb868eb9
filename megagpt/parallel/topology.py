"""The process groups of a dp x pp x tp layout (megagpt.parallel.layout decides the layout).

Ranks are laid out as DeepSpeed's PipeModelDataParallelTopology does (axes pipe, data, model with
model innermost), so the tp ranks of a group are adjacent: on a GPU node they share the fast links.
The same grid object is the `mpu` DeepSpeed takes: its data-parallel group is the one ZeRO shards
over (a pipeline stage's own dp group when pp > 1), its model-parallel group (pipe x tp) the one the
gradient norm and overflow checks sum over.
"""

from __future__ import annotations

import torch.distributed as dist
from deepspeed.runtime.pipe.topology import PipelineParallelGrid, PipeModelDataParallelTopology

from megagpt.parallel.layout import Layout


class Topology:
    """Process groups of a layout. Builds every group on every rank (torch requires it), in one order."""

    def __init__(self, layout: Layout):
        self.layout = layout
        self.ds_topology = PipeModelDataParallelTopology(num_pp=layout.pp, num_mp=layout.tp, num_dp=layout.dp)
        # The grid is DeepSpeed's `mpu`: data-parallel groups for ZeRO, model-parallel ones for clipping.
        self.mpu = PipelineParallelGrid(topology=self.ds_topology)
        coord = self.ds_topology.get_coord(dist.get_rank())
        self.dp_rank, self.pp_rank, self.tp_rank = coord.data, coord.pipe, coord.model

    @property
    def tp_group(self) -> dist.ProcessGroup:
        return self.mpu.get_slice_parallel_group()

    @property
    def dp_group(self) -> dist.ProcessGroup:
        return self.mpu.get_data_parallel_group()
