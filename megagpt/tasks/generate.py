"""Sampling continuations from a GPT: batched prompts, KV cache, temperature, top-k, top-p.

    python -m megagpt.generate --checkpoint runs/demo --prompt "The government said" \
        --prompt "Scientists have" --max-new 60 --temperature 0.8 --top-k 40 --seed 1

Prompts of different lengths are left-padded into one batch; the KV cache keeps padding out of
attention and positions, so each row gets what it would get alone. Past block_size the context
slides: every step then recomputes the last block_size tokens, as the uncached path does.
"""

from __future__ import annotations

import argparse
import math
import sys

import torch
import torch.nn as nn

from megagpt.model.gpt import KVCache


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """(B, V) logits with everything outside the top k, and outside the nucleus of mass top_p, at -inf."""
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the tokens ranked above it already hold top_p of the mass.
        drop = probs.cumsum(-1) - probs >= top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


@torch.no_grad()
def generate(
    model: nn.Module,
    prompts: list[list[int]],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    use_cache: bool = True,
) -> list[list[int]]:
    """Each prompt's continuation (new tokens only), each stopping at its first `eos_id`.

    Under ZeRO-3 every rank must call this with the same prompts and generator seed: each forward
    gathers parameters collectively, so all ranks must take the same number of steps.
    """
    if any(not p for p in prompts):
        raise ValueError("every prompt needs at least one token (start it with the end-of-text token)")
    check_sampling(max_new_tokens, temperature, top_k, top_p)
    if not use_cache:  # the reference path: one row at a time, the whole window every step
        return [_generate_uncached(model, p, max_new_tokens, temperature, top_k, top_p, eos_id,
                                   generator, device) for p in prompts]
    block_size = model.config.block_size
    width = max(len(p) for p in prompts)
    tokens = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=device)
    valid = torch.tensor([[False] * (width - len(p)) + [True] * len(p) for p in prompts], device=device)
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    new = []
    cache = None
    for _ in range(max_new_tokens):
        if cache is None or cache.length == block_size:  # first step, or slide the window
            cache = KVCache(model.config, valid[:, -block_size:])
            logits, _ = model(tokens[:, -block_size:], cache=cache)
        else:
            logits, _ = model(tokens[:, -1:], cache=cache)
        token = _pick(logits[:, -1].float(), temperature, top_k, top_p, generator).to(device)
        token = token.masked_fill(done, 0 if eos_id is None else eos_id)
        new.append(token)
        tokens = torch.cat([tokens, token[:, None]], dim=1)
        valid = torch.cat([valid, valid.new_ones(len(prompts), 1)], dim=1)
        if eos_id is not None:
            done |= token == eos_id
            if done.all():
                break
    out = torch.stack(new, 1).tolist() if new else [[] for _ in prompts]
    return [row[: row.index(eos_id)] if eos_id in row else row for row in out]


def check_sampling(max_new_tokens: int, temperature: float, top_k: int | None = None,
                   top_p: float | None = None, names: dict[str, str] | None = None) -> None:
    """Refuse settings that would sample nonsense, naming the option (`names` maps the parameter
    to what the caller calls it, e.g. the command line's --max-new)."""
    names = {"max_new_tokens": "max_new_tokens", "temperature": "temperature", "top_k": "top_k",
             "top_p": "top_p", **(names or {})}
    if max_new_tokens < 0:
        raise ValueError(f"{names['max_new_tokens']} must be 0 or more new tokens, got {max_new_tokens}")
    if not temperature >= 0 or math.isinf(temperature):  # `not >=` also catches NaN
        raise ValueError(f"{names['temperature']} must be a finite number >= 0 (0 is greedy), "
                         f"got {temperature}")
    if top_k is not None and top_k < 0:
        raise ValueError(f"{names['top_k']} must be positive (or 0 / unset for no limit), got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"{names['top_p']} must lie in (0, 1], got {top_p}")


def _generate_uncached(model: nn.Module, prompt: list[int], max_new_tokens: int, temperature: float,
                       top_k: int | None, top_p: float | None, eos_id: int | None,
                       generator: torch.Generator | None, device: torch.device | str) -> list[int]:
    idx = torch.tensor([prompt], device=device)
    new: list[int] = []
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -model.config.block_size :])
        token = int(_pick(logits[:, -1].float(), temperature, top_k, top_p, generator))
        if token == eos_id:
            break
        new.append(token)
        idx = torch.cat([idx, idx.new_tensor([[token]])], dim=1)
    return new


def _pick(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
          generator: torch.Generator | None) -> torch.Tensor:
    """(B,) next tokens from (B, V) logits: argmax at temperature 0, else a filtered sample."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = filter_logits(logits / temperature, top_k, top_p).softmax(-1).cpu()
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def sample(model: nn.Module, prompt: list[int], max_new_tokens: int, temperature: float = 1.0,
           top_k: int | None = None, eos_id: int | None = None,
           generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> list[int]:
    """One prompt's continuation; see generate()."""
    return generate(model, [prompt], max_new_tokens, temperature, top_k, None, eos_id, generator,
                    device)[0]


def main(argv: list[str] | None = None) -> int:
    from megagpt.checkpoint import load_pretrained

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="a checkpoint folder (stepNNNNNNNN, a checkpoints/ or run folder), or a model folder")
    p.add_argument("--prompt", action="append", required=True, help="repeat for a batch of prompts")
    p.add_argument("--max-new", type=int, default=100)
    p.add_argument("--temperature", type=float, default=1.0, help="0 for greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cache", action="store_true", help="recompute the whole context every step")
    args = p.parse_args(argv)
    try:  # before loading the model: a typo costs nothing
        check_sampling(args.max_new, args.temperature, args.top_k, args.top_p,
                       {"max_new_tokens": "--max-new", "temperature": "--temperature", "top_k": "--top-k",
                        "top_p": "--top-p"})
    except ValueError as e:
        p.error(str(e))
    try:
        model, tokenizer, device = load_pretrained(args.checkpoint)
    except (FileNotFoundError, ValueError) as e:
        print(f"megagpt.tasks.generate: {e}", file=sys.stderr)
        return 2
    prompts = [tokenizer.encode(text) or [tokenizer.eos_id] for text in args.prompt]
    outs = generate(model, prompts, args.max_new, args.temperature, args.top_k, args.top_p,
                    tokenizer.eos_id, torch.Generator().manual_seed(args.seed), device,
                    use_cache=not args.no_cache)
    for text, ids in zip(args.prompt, outs):
        print(text + tokenizer.decode(ids))
        print("-" * 40)
    return 0

