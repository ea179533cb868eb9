"""The accelerator a rank picks from what its task sees (megagpt.parallel.launcher.device_index).

SLURM shows a task all of its node's GPUs, or, under --gpus-per-task=1 / --gpu-bind=single / map_gpu,
one of them, or under --gpu-bind=closest its socket's, renumbered from 0 each time. DeepSpeed takes
LOCAL_RANK as the device index, right only in the first case. No GPU needed: the index is checked.
"""

from __future__ import annotations

import pytest

from megagpt.parallel.launcher import device_index

LOCAL_RANKS = range(8)  # 8 ranks on a node of 8 GPUs


def test_all_gpus_visible_each_rank_takes_its_local_rank():
    assert [device_index(r, visible=8) for r in LOCAL_RANKS] == list(LOCAL_RANKS)


def test_gpus_per_task_1_each_rank_takes_the_one_it_sees():
    # CUDA_VISIBLE_DEVICES=<its own GPU> in each task: LOCAL_RANK 5 as an index would be out of range.
    assert [device_index(r, visible=1) for r in LOCAL_RANKS] == [0] * 8


def test_gpu_bind_closest_each_socket_s_ranks_share_its_4_gpus():
    # Ranks 0-3 see GPUs 0-3 and ranks 4-7 see GPUs 4-7, both as 0-3 (block distribution).
    assert [device_index(r, visible=4) for r in LOCAL_RANKS] == [0, 1, 2, 3, 0, 1, 2, 3]


def test_a_rank_that_sees_no_gpu_is_told_what_to_check():
    with pytest.raises(RuntimeError, match="sees no accelerator.*--gpus-per-task"):
        device_index(3, visible=0)
