"""After a step whose loss or gradient norm is not finite: which checkpoint is still sane, and how
often train.on_nonfinite=rewind may go back to one.

Every checkpoint records the loss of the step it saved (`loss` in its trainer state; None when that
step was not finite). `latest` may hold weights already on their way up (a spike saved just before
the NaN, or steps skipped after it), so the advice after a divergence names the newest checkpoint
whose recorded loss is sane (finite, and not a spike over the losses saved before it), not `latest`.
Rewinding (PaLM, section 5.1: restart from a checkpoint about 100 steps before the spike and skip
the batches that led to it) restores that checkpoint's weights, optimizer, schedule and RNG but
keeps the data position, so the batches between it and the bad step are never trained on; at most
MAX_REWINDS times a run.
"""

from __future__ import annotations

import math
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist

from megagpt import checkpoint
from megagpt.checkpoint.checkpointer import TRAINER_STATE
from megagpt.config import RunConfig

MAX_REWINDS = 3
SPIKE_FACTOR = 2.0  # a loss above this many times the lowest one saved before is a spike


class Diverged(RuntimeError):
    """A step's loss or gradient norm was not finite and train.on_nonfinite does not allow skipping it."""


def saved_loss(path: Path) -> float | None:
    """The loss the checkpoint `path` recorded for its step (None: not finite, or not recorded)."""
    try:
        client = torch.load(path / TRAINER_STATE, weights_only=True)["client_state"]
    except (OSError, RuntimeError, KeyError):
        return None
    loss = client.get("loss")
    return loss if isinstance(loss, float) and math.isfinite(loss) else None


def last_sane_checkpoint(folder: Path) -> Path | None:
    """The newest published checkpoint in `folder` whose recorded loss is sane: finite, and at most
    SPIKE_FACTOR times the lowest loss an earlier checkpoint recorded (a spike saved just before
    the NaN is finite, but its weights are already blown up)."""
    sane, lowest = None, math.inf
    for path in checkpoint.published(folder):
        loss = saved_loss(path)
        if loss is None:
            continue
        if loss <= SPIKE_FACTOR * lowest:
            sane = path
        lowest = min(lowest, loss)
    return sane


def nonfinite(engine: deepspeed.DeepSpeedEngine, loss: torch.Tensor) -> tuple[str | None, float]:
    """What was not finite in the step just taken, the same on every rank (None when all was), and
    the step's mean loss over the world."""
    total = loss.detach().clone()
    dist.all_reduce(total)  # a NaN or inf on any rank reaches all
    norm = engine.get_global_grad_norm()  # already global
    problems = []
    if not math.isfinite(total.item()):
        problems.append(f"loss {total.item() / dist.get_world_size()}")
    if norm is not None and not math.isfinite(float(norm)):
        problems.append(f"grad norm {float(norm)}")
    if not problems and not engine.was_step_applied():  # DeepSpeed's own overflow check skipped it
        problems.append("gradients not finite")
    return " and ".join(problems) or None, total.item() / dist.get_world_size()


def check_skippable(cfg: RunConfig, engine: deepspeed.DeepSpeedEngine, step: int, problem: str) -> None:
    """Raise Diverged unless the non-finite step can be skipped. DeepSpeed's ZeRO optimizers refuse
    to apply an update whose gradient norm is not finite (they zero the gradients, leave the lr
    schedule and weights as they were, count engine.skipped_steps): skipping is keeping that."""
    t = cfg.train
    if t.on_nonfinite == "skip" and not engine.was_step_applied():
        return
    if t.on_nonfinite == "skip":
        why, skip = "DeepSpeed applied its update (its gradients were finite), so it cannot be skipped", ""
    else:
        why, skip = "training diverged", (", or set train.on_nonfinite=skip to skip such steps (rewind: to "
                                          "go back to that checkpoint and past the batches since)")
    raise Diverged(diverged_message(cfg, step, problem, why, skip))


def diverged_message(cfg: RunConfig, step: int, problem: str, why: str, more: str) -> str:
    """What stopped the run, and the checkpoint to resume from: the newest whose loss was sane
    (`latest` may already hold weights on their way up)."""
    good = last_sane_checkpoint(cfg.checkpoint_dir)
    resume = (f" from {good} (train.resume={good}), the newest checkpoint whose loss was sane"
              if good is not None else "")
    return (f"step {step}: {problem}: {why}. The run stops without saving this step; the checkpoints in "
            f"{cfg.checkpoint_dir} are as they were. Lower train.lr (now {cfg.train.lr}) or raise "
            f"train.warmup_steps and resume{resume}{more}")
