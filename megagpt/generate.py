"""Sampling continuations from a GPT: temperature and top-k."""

from __future__ import annotations

import torch
import torch.nn as nn


@torch.no_grad()
def sample(
    model: nn.Module,
    prompt: list[int],
    max_new_tokens: int,
    block_size: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> list[int]:
    """The prompt's continuation (new tokens only), stopping early at `eos_id`.

    Under ZeRO-3 every rank must call this with the same prompt and generator seed: each forward
    gathers parameters collectively, so all ranks must take the same number of steps.
    """
    idx = torch.tensor([prompt], dtype=torch.long, device=device)
    new: list[int] = []
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -block_size:])
        logits = logits[0, -1].float()
        if temperature == 0:
            token = int(logits.argmax())
        else:
            logits = logits / temperature
            if top_k:
                kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = torch.softmax(logits, dim=-1).cpu()
            token = int(torch.multinomial(probs, 1, generator=generator))
        if token == eos_id:
            break
        new.append(token)
        idx = torch.cat([idx, idx.new_tensor([[token]])], dim=1)
    return new
