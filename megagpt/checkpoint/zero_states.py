"""Where DeepSpeed keeps a rank's fp32 training state, and how a checkpoint reaches it.

Under ZeRO-1/2 a parameter's fp32 master weight and Adam moments are fragments of flat partitions
that stay in memory (`_hp_mapping`). Under ZeRO-3 they are ranges of an optimizer *sub-group*
(`zero_optimization.sub_group_size` elements stepped together); with the optimizer offloaded to
NVMe only the sub-group being stepped is in memory, swapped in from its files and out again.
SubGroupStates gives a checkpoint the same discipline: one sub-group in memory at a time, visited
in order, so saving or loading never holds more than one sub-group's states whatever the model's
size. Going through DeepSpeed's per-parameter getters instead would swap a whole sub-group in
for every parameter and state (thousands of reads of the same files), and its getter on a CPU
returns a view of a swap buffer it has already released.
"""

from __future__ import annotations

from typing import Any

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.ops.adam import DeepSpeedCPUAdam

from megagpt.checkpoint.folders import CheckpointError

STATES = ("param", "exp_avg", "exp_avg_sq")  # fp32 master weight and Adam's moments, per parameter


class SubGroupStates:
    """ZeRO-3's fp32 states, one optimizer sub-group in memory at a time.

    view() swaps in the parameter's sub-group (when offloaded) after putting away the previous
    one; put away() writes a sub-group back only if it was written to (a load), and then also
    refreshes the parameters the forward gathers from the new fp32 weights."""

    def __init__(self, engine: deepspeed.DeepSpeedEngine):
        self.zero = engine.optimizer
        self.current: int | None = None
        self.written = False

    def position(self, param: torch.nn.Parameter) -> tuple[int, int, int]:
        """(sub-group, offset in it, elements): where `param`'s padded partition lives."""
        return self.zero.grad_position[self.zero.get_param_id(param)]

    def view(self, param: torch.nn.Parameter, key: str, for_write: bool = False) -> torch.Tensor:
        """`param`'s padded partition of state `key`, a view of the live (swapped-in) storage."""
        group, offset, numel = self.position(param)
        if group != self.current:
            self.put_away()
            if self.zero._swappable_optimizer_subgroup(group):
                self.zero._optimizer_states_and_gradient_swap_in(group)
            self.current = group
        self.written |= for_write
        flat = self.zero.fp32_partitioned_groups_flat[group]
        tensor = flat if key == STATES[0] else self.zero.optimizer.state[flat][key]
        return tensor.narrow(0, offset, numel)

    def put_away(self) -> None:
        """Done with the sub-group in memory: written back (and the model's weights refreshed from it)
        if a load wrote to it, its swap buffers released if it is offloaded."""
        group, self.current = self.current, None
        if group is None:
            return
        swapped = self.zero._swappable_optimizer_subgroup(group)
        if self.written:
            self.zero._reassign_or_swap_out_partitioned_parameters(group)
            if swapped:
                self.zero._optimizer_states_and_gradient_swap_out(group)
        elif swapped:
            self.zero._release_swap_buffers(group)
        self.written = False


def local_range(param: torch.nn.Parameter, key: str, name: str, states: SubGroupStates | None
                ) -> tuple[int, torch.Tensor]:
    """(start, values): this rank's ZeRO range of `param`'s (tp-local, flattened) fp32 weight or
    Adam moment `key`, padding cut. ZeRO-3 reads it through `states` (a sub-group at a time)."""
    if hasattr(param, "ds_tensor"):  # ZeRO-3: equal ceil-sized partitions, the last one padded
        size = param.ds_tensor.ds_numel
        start = min(param.ds_numel, size * dist.get_rank(group=param.ds_process_group))
        return start, states.view(param, key)[: min(size, param.ds_numel - start)]
    mapping = getattr(param, "_hp_mapping", None)  # ZeRO-1/2: a fragment of the flat partition, or none
    if mapping is None:
        if hasattr(param, "_hp_mapping"):
            return 0, torch.empty(0)
        raise CheckpointError(f"{name}: no ZeRO fp32 state to checkpoint; megagpt checkpoints ZeRO stages "
                              "1-3: set parallel.zero_stage to 1, 2, 3 or auto")
    value = mapping.hp_fragment if key == STATES[0] else mapping.get_optim_state_fragment(key)
    return mapping.lp_fragment_address.start, value.flatten()


def link_adam_state(engine: deepspeed.DeepSpeedEngine) -> None:
    """Make Adam's state exist for every flat fp32 partition and DeepSpeed's per-parameter views of
    it point there. torch's AdamW creates its state at the first step (a run resumed under another
    layout has not stepped yet), and DeepSpeed 0.19's ZeRO-1/2 links the views once, inside the
    first param group's first step, when the second group (biases, LayerNorms) has no state yet.
    (With the optimizer offloaded DeepSpeed creates every sub-group's state when it starts.)"""
    zero = engine.optimizer
    # DeepSpeed's CPU Adam (with offload) counts steps in an int, torch's AdamW in a tensor (one
    # each: a shared one would count every sub-group's step).
    cpu_adam = isinstance(zero.optimizer, DeepSpeedCPUAdam)

    def fresh(flat: torch.Tensor) -> dict[str, Any]:
        return {"step": 0 if cpu_adam else torch.zeros(()), "exp_avg": torch.zeros_like(flat),
                "exp_avg_sq": torch.zeros_like(flat)}

    # ZeRO-3 steps its fp32 partitions by swapping them into the param groups one at a time.
    flats = [p for group in zero.optimizer.param_groups for p in group["params"]]
    for flat in flats:
        if not zero.optimizer.state[flat]:
            zero.optimizer.state[flat].update(fresh(flat))
    for group, flat in enumerate(getattr(zero, "fp32_partitioned_groups_flat", [])):
        if zero.optimizer.state[flat]:
            continue
        swapped = zero._swappable_optimizer_subgroup(group)
        if swapped:  # in memory to be given its moments, which swapping out then writes to its files
            zero._optimizer_states_and_gradient_swap_in(group)
        zero.optimizer.state[flat].update(fresh(flat))
        if swapped:
            zero._optimizer_states_and_gradient_swap_out(group)
    if hasattr(zero, "_lazy_init_hp_params_optimizer_state"):  # ZeRO-1/2 (ZeRO-3 looks states up)
        zero._hp_optimizer_states_linked = False
        zero._lazy_init_hp_params_optimizer_state()


def adam_step(engine: deepspeed.DeepSpeedEngine) -> float:
    """Adam's step count, the same in every parameter group (torch's AdamW keeps a tensor, DeepSpeed's
    CPU Adam, used with offload, an int)."""
    steps = {float(state["step"]) for state in engine.optimizer.optimizer.state.values() if "step" in state}
    if len(steps) != 1:
        raise RuntimeError(f"Adam's step counts differ between parameter groups: {sorted(steps)}")
    return steps.pop()


def set_adam_step(engine: deepspeed.DeepSpeedEngine, step: float) -> None:
    for state in engine.optimizer.optimizer.state.values():
        if isinstance(state.get("step"), torch.Tensor):
            state["step"].fill_(step)
        elif "step" in state:
            state["step"] = int(step)


def zero_states(engine: deepspeed.DeepSpeedEngine) -> SubGroupStates | None:
    """The sub-group walker of a ZeRO-3 engine, None for ZeRO-1/2."""
    return SubGroupStates(engine) if hasattr(engine.optimizer, "fp32_partitioned_groups_flat") else None


def by_position(params: list[tuple[str, Any]], states: SubGroupStates | None) -> list[tuple[str, Any]]:
    """`params` in the order their states lie in ZeRO-3's sub-groups (each sub-group visited once);
    as given for ZeRO-1/2."""
    if states is None:
        return params
    return sorted(params, key=lambda item: states.position(item[1])[:2])
