"""The pieces a rank writes are exactly its share of the one-process tensors, for every split.

`checkpoint.rectangles` maps a rank's ZeRO range of its tp slice to rectangles of the one-process
tensor. Here every (tp split, tp size, dp size) is checked against take_split and ZeRO-3's ceil
partitioning done by hand: the rectangles, placed at their offsets, rebuild the whole tensor, cover
each element once, and are views of the rank's own buffer (no copy).
"""

from __future__ import annotations

import math

import pytest
import torch

from megagpt.checkpoint import rectangles


def tp_slice(full: torch.Tensor, split: tuple[int, int] | None, rank: int, size: int) -> torch.Tensor:
    """take_split without a process group."""
    if split is None:
        return full
    dim, parts = split
    return torch.cat([b.chunk(size, dim=dim)[rank] for b in full.chunk(parts, dim=dim)], dim=dim)


CASES = [  # shape, split (dim, parts) or None
    ((12, 5), (0, 1)),   # column-parallel weight / vocab-parallel embedding
    ((12, 8), (0, 3)),   # fused QKV: each tp rank has its heads' q, k and v
    ((6, 12), (1, 1)),   # row-parallel weight: split columns
    ((24,), (0, 3)),     # QKV bias
    ((10,), None),       # LayerNorm, replicated
    ((7, 3), None),
]


@pytest.mark.parametrize("shape, split", CASES)
@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("dp", [1, 2, 3, 5])
def test_rectangles_rebuild_the_one_process_tensor(shape, split, tp, dp):
    full = torch.arange(math.prod(shape), dtype=torch.float32).reshape(shape)
    rebuilt = torch.full(shape, -1.0)
    covered = torch.zeros(shape, dtype=torch.int64)
    for tp_rank in range(tp if split else 1):
        local = tp_slice(full, split, tp_rank, tp).contiguous().flatten()
        size = math.ceil(local.numel() / dp)  # ZeRO-3: equal partitions, the last shorter or empty
        for dp_rank in range(dp):
            start = min(local.numel(), dp_rank * size)
            mine = local[start:start + size]
            for offsets, view in rectangles(mine, start, tuple(tp_slice(full, split, 0, tp).shape), split,
                                            tp_rank, tp if split else 1).items():
                assert view.untyped_storage().data_ptr() == mine.untyped_storage().data_ptr()
                where = tuple(slice(o, o + n) for o, n in zip(offsets, view.shape))
                rebuilt[where] = view
                covered[where] += 1
    assert torch.equal(rebuilt, full)
    assert torch.equal(covered, torch.ones_like(covered))  # each element in exactly one piece


def test_a_matrix_range_is_at_most_three_rectangles():
    flat = torch.arange(3, 3 + 25, dtype=torch.float32)  # starts in row 0, ends inside row 4 of 6 x 6
    pieces = rectangles(flat, 3, (6, 6), None, 0, 1)
    assert {o: tuple(v.shape) for o, v in pieces.items()} == {(0, 3): (1, 3), (1, 0): (3, 6), (4, 0): (1, 4)}
