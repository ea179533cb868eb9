"""megagpt's pipeline schedule and the DeepSpeed internals it leans on (megagpt.parallel.stage_pipeline).

The layout tests (test_layouts.py) prove the whole: every pp layout equals one process. These pin
the parts: the 1F1B order, the split of blocks, and the two private DeepSpeed behaviours the
schedule works around, so that a DeepSpeed upgrade that changes them fails here, by name."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys

import pytest
from deepspeed.runtime.zero import partitioned_param_coordinator
from deepspeed.runtime.zero.partitioned_param_coordinator import PartitionedParameterCoordinator

from megagpt.parallel.stage_pipeline import one_f_one_b, stage_blocks
from tests.train.conftest import ROOT, free_port


@pytest.mark.parametrize("stages, micro", [(2, 1), (2, 2), (3, 2), (4, 8)])
def test_one_f_one_b_runs_each_micro_batch_forward_then_backward_with_bounded_activations(stages, micro):
    for stage in range(stages):
        order = one_f_one_b(stage, stages, micro)
        assert sorted(order) == sorted([("F", i) for i in range(micro)] + [("B", i) for i in range(micro)])
        assert [i for kind, i in order if kind == "B"] == list(range(micro))  # backwards in order
        in_flight = peak = 0
        for kind, i in order:
            assert kind == "F" or order.index(("F", i)) < order.index(("B", i))
            in_flight += 1 if kind == "F" else -1
            peak = max(peak, in_flight)
        assert peak == min(stages - stage, micro)  # the last stage alternates: one at a time
    assert one_f_one_b(0, 2, 3) == [("F", 0), ("F", 1), ("B", 0), ("F", 2), ("B", 1), ("B", 2)]


def test_stages_share_the_blocks_in_order():
    for n_layer, stages in [(2, 2), (5, 2), (48, 4), (7, 3)]:
        blocks = [list(stage_blocks(n_layer, stages, s)) for s in range(stages)]
        assert sum(blocks, []) == list(range(n_layer))
        assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_zero3_trace_check_is_the_module_function_the_schedule_replaces():
    """Trap (a): the check must still be looked up in partitioned_param_coordinator at call time,
    where _check_traces_within puts the stage's version."""
    assert hasattr(partitioned_param_coordinator, "assert_ints_same_as_other_ranks")
    assert "assert_ints_same_as_other_ranks(" in inspect.getsource(PartitionedParameterCoordinator.reset_step)


@pytest.mark.slow
def test_zero3_needs_clear_backward_seen_flag_with_two_micro_batches_in_flight():
    """Trap (e), measured: F0 F1 B0 B1 (1F1B's warm-up) without clear_backward_seen_flag() before
    each backward trains on wrong gradients, silently; with it, exactly on the sequential ones.
    If DeepSpeed fixes the former, the workaround can go; if it breaks the latter, the schedule is
    wrong: both fail here."""
    env = dict(os.environ, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()), PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "tests/parallel/stage_bookkeeping.py"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    print(result)
    assert result["pipelined_with_clear"] == 0.0
    without = result["pipelined_without_clear"]
    assert isinstance(without, str) or without > 1e-3, "DeepSpeed no longer needs the workaround"
