"""Generation speed with and without the KV cache: 256 new tokens, greedy, the same model.

    python bench/generate_kv_cache.py [--new 256] [--batch 1 4] [--json bench/results/kv_cache.json]

Random weights of GPT-2 layouts (timing does not depend on the values), a 16-token prompt, greedy
decoding so that both paths emit the same tokens (checked). Without the cache every step recomputes
the whole prefix (quadratic in length); with it, one position per step. Reports the seconds of each
and the speed-up. Uses the accelerator when there is one.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path

import torch
from deepspeed.accelerator import get_accelerator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from megagpt.config import ModelConfig  # noqa: E402
from megagpt.generate import generate  # noqa: E402
from megagpt.model import GPT  # noqa: E402

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--new", type=int, default=256)
    p.add_argument("--batch", type=int, nargs="+", default=[1])
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--json", default=f"bench/results/kv_cache-{date.today()}.json")
    args = p.parse_args()
    device = get_accelerator().device_name()
    results = []
    for name in args.shapes:
        shape = dict(SHAPES[name])
        torch.manual_seed(0)
        model = GPT(ModelConfig.preset(shape.pop("preset"), dropout=0.0, **shape)).to(device).eval()
        for batch in args.batch:
            prompts = torch.randint(0, model.config.vocab_size, (batch, 16)).tolist()
            timed(model, prompts, 8, True, device)  # warm-up
            cached_s, cached = timed(model, prompts, args.new, True, device)
            uncached_s, uncached = timed(model, prompts, args.new, False, device)
            assert cached == uncached, "cached and uncached greedy tokens differ"
            results.append(dict(shape=name, batch=batch, prompt=16, new_tokens=args.new,
                                params=model.num_parameters(), cached_s=cached_s, uncached_s=uncached_s,
                                speedup=uncached_s / cached_s))
    out = {"bench": "generate_kv_cache", "date": str(date.today()), "device": device,
           "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "results": results}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"{'model':<30}{'batch':>6}{'cached s':>10}{'uncached s':>12}{'speed-up':>10}")
    for r in results:
        print(f"{r['shape']:<30}{r['batch']:>6}{r['cached_s']:>10.2f}{r['uncached_s']:>12.2f}{r['speedup']:>9.1f}x")
    print(f"results: {args.json}")


if __name__ == "__main__":
    main()
