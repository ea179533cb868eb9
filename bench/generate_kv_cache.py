"""How much faster is generation with the KV cache than without (256 new tokens, greedy)?

    python -m bench.generate_kv_cache [--new 256] [--batch 1 4] [--shapes ...] [--json FILE]

Random weights of GPT-2 layouts (timing does not depend on the values), a 16-token prompt, greedy
decoding so that both paths emit the same tokens (checked). Without the cache every step recomputes
the whole prefix (quadratic in length); with it, one position per step. Reports the seconds of each
and the speed-up. Uses the accelerator when there is one.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from deepspeed.accelerator import get_accelerator

from bench import harness
from megagpt.config import ModelConfig
from megagpt.model.gpt import GPT
from megagpt.tasks.generate import generate

SHAPES = {
    "demo (4 x 256, vocab 8192)": dict(preset="gpt2-small", n_layer=4, n_head=4, n_embd=256, vocab_size=8192,
                                      block_size=512),
    "gpt2-small (124M)": dict(preset="gpt2-small"),
}


def timed(model: GPT, prompts: list[list[int]], new: int, use_cache: bool, device: str) -> tuple[float, list]:
    accel = get_accelerator()
    accel.synchronize()
    t = time.perf_counter()
    out = generate(model, prompts, new, temperature=0, device=device, use_cache=use_cache)
    accel.synchronize()
    return time.perf_counter() - t, out


def measure(shapes: list[str], batches: list[int], new: int, device: str) -> list[dict]:
    """Seconds of `new` greedy tokens with and without the cache, for each shape and batch size."""
    results = []
    for name in shapes:
        shape = dict(SHAPES[name])
        torch.manual_seed(0)
        model = GPT(ModelConfig.preset(shape.pop("preset"), dropout=0.0, **shape)).to(device).eval()
        for batch in batches:
            prompts = torch.randint(0, model.config.vocab_size, (batch, 16)).tolist()
            timed(model, prompts, 8, True, device)  # warm-up
            cached_s, cached = timed(model, prompts, new, True, device)
            uncached_s, uncached = timed(model, prompts, new, False, device)
            assert cached == uncached, "cached and uncached greedy tokens differ"
            results.append(dict(shape=name, batch=batch, prompt=16, new_tokens=new,
                                params=model.num_parameters(), cached_s=cached_s, uncached_s=uncached_s,
                                speedup=uncached_s / cached_s))
    return results


def summarize(settings: dict[str, Any], figures: dict[str, Any]) -> harness.Result:
    """The harness result of a run: `figures` holds results (one a shape and batch size)."""
    table = harness.Table(["model", "batch", "cached s", "uncached s", "speed-up"])
    for r in figures["results"]:
        table.add(r["shape"], r["batch"], round(r["cached_s"], 2), round(r["uncached_s"], 2),
                  f"{r['speedup']:.1f}x")
    return harness.Result(
        question=harness.question_of(__doc__), settings=settings, figures=figures, table=table,
        reference="the same model and prompts generating without the cache (the whole prefix every step)",
        goal=harness.Goal("the cached path faster at every shape and batch, with the same greedy tokens",
                          all(r["speedup"] > 1 for r in figures["results"])))


def main() -> None:
    p = harness.parser(__doc__)
    p.add_argument("--new", type=int, default=256)
    p.add_argument("--batch", type=int, nargs="+", default=[1])
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    args = p.parse_args()
    device = get_accelerator().device_name()
    settings = {"device": device, "threads": torch.get_num_threads(), "new_tokens": args.new,
                "prompt_tokens": 16, "batch": args.batch, "shapes": args.shapes}
    figures = {"results": measure(args.shapes, args.batch, args.new, device)}
    harness.report("generate_kv_cache", summarize(settings, figures), args.json)


if __name__ == "__main__":
    main()
