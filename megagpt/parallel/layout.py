"""The dp x pp x tp layout of a run: what it is, and whether a run config may ask for it.

A Layout is decided from the config and the world size alone, before any compute, by
megagpt.sizing.layout_rules (an impossible one is refused with why and what would run); the
planner (megagpt.sizing.planner) enumerates the same Layouts to estimate their memory and speed;
megagpt.parallel.topology turns one into process groups; checkpoints record it in layout.json.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Layout:
    """How a run's processes share the work: world = dp x pp x tp, ZeRO over dp, activation
    checkpointing every `activation_checkpoint` blocks (0: none), `micro_batch` sequences a rank,
    and where ZeRO-3 keeps the optimizer state and the parameters (device, cpu or nvme)."""

    dp: int
    pp: int = 1
    tp: int = 1
    zero_stage: int = 0
    activation_checkpoint: int = 0
    micro_batch: int = 1
    offload_optimizer: str = "none"  # ZeRO-Offload / -Infinity: "none", "cpu" or "nvme"
    offload_params: str = "none"

    @property
    def world(self) -> int:
        return self.dp * self.pp * self.tp

    def same_ranks(self, other: Layout) -> bool:
        """Whether each rank of `other` does the same share of the work as here (its RNG state
        applies as it is), whatever the ZeRO stage or micro-batch."""
        return (self.dp, self.pp, self.tp) == (other.dp, other.pp, other.tp)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> Layout:
        """A layout saved by to_dict (or by an earlier megagpt, which also wrote the world size)."""
        return cls(**{k: v for k, v in saved.items() if k != "world"})

    def __str__(self) -> str:
        offload = "".join(f" offload_{what}={where}" for what, where in self.offloads().items())
        return (f"dp{self.dp} pp{self.pp} tp{self.tp} zero{self.zero_stage} "
                f"ac={self.activation_checkpoint} micro={self.micro_batch}{offload}")

    def offloads(self) -> dict[str, str]:
        """What is offloaded where: {"optimizer": "nvme", ...}, empty without offload."""
        chosen = {"optimizer": self.offload_optimizer, "params": self.offload_params}
        return {what: where for what, where in chosen.items() if where != "none"}



def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]
