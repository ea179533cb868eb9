"""Training-step time of megagpt's GPT against transformers' GPT2LMHeadModel of the same shape.

    python bench/step_vs_hf.py [--steps 20] [--json bench/results/step_vs_hf.json]

One forward + backward + AdamW step (torch.optim.AdamW, fp32, the same batch) per iteration;
the two models alternate within one run so that machine noise hits both alike. Reports the
median step time of each and the ratio HF / megagpt (above 1: megagpt is faster).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from megagpt.config import ModelConfig  # noqa: E402
from megagpt.model import GPT  # noqa: E402

# gpt2-small's layout (pre-LN, GELU, tied embeddings, 50257 vocab) at sizes a CPU steps in seconds.
SHAPES = [
    dict(n_layer=2, n_head=4, n_embd=128, block_size=128, batch=8),
    dict(n_layer=4, n_head=4, n_embd=256, block_size=128, batch=8),
    dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch=4),
]


def step_fn(model, loss_of, batch):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> float:
        t = time.perf_counter()
        loss = loss_of(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    return step


def ours_loss(model, idx):
    return model(idx[:, :-1], idx[:, 1:], return_logits=False)[1]


def hf_loss(model, idx):
    return model(idx[:, :-1], labels=idx[:, :-1]).loss  # HF shifts labels inside


def bench(shape: dict, steps: int, vocab: int) -> dict:
    batch = shape["batch"]
    cfg = ModelConfig.preset("gpt2-small", n_layer=shape["n_layer"], n_head=shape["n_head"],
                             n_embd=shape["n_embd"], block_size=shape["block_size"], dropout=0.0,
                             vocab_size=vocab)
    torch.manual_seed(0)
    ours = GPT(cfg).train()
    hf = ours.to_hf().train()
    idx = torch.randint(0, vocab, (batch, shape["block_size"] + 1))
    steps_ours, steps_hf = step_fn(ours, ours_loss, idx), step_fn(hf, hf_loss, idx)
    for _ in range(3):  # warm-up: allocator, optimizer state
        steps_ours(), steps_hf()
    t_ours, t_hf = [], []
    for _ in range(steps):
        t_ours.append(steps_ours())
        t_hf.append(steps_hf())
    ours_s, hf_s = statistics.median(t_ours), statistics.median(t_hf)
    tokens = batch * shape["block_size"]
    return dict(shape, vocab=vocab, params=ours.num_parameters(), megagpt_s=ours_s, hf_s=hf_s,
                megagpt_tokens_per_s=tokens / ours_s, hf_tokens_per_s=tokens / hf_s,
                speedup=hf_s / ours_s)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--json", default=f"bench/results/step_vs_hf-{date.today()}.json")
    args = p.parse_args()
    results = [bench(s, args.steps, args.vocab) for s in SHAPES]
    out = {"bench": "step_vs_hf", "date": str(date.today()), "device": platform.processor() or "cpu",
           "threads": torch.get_num_threads(), "torch": torch.__version__, "results": results}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"{'shape (L/H/C/T x B)':<24}{'params':>10}{'megagpt ms':>12}{'HF ms':>10}{'HF/megagpt':>12}")
    for r in results:
        shape = f"{r['n_layer']}/{r['n_head']}/{r['n_embd']}/{r['block_size']} x {r['batch']}"
        print(f"{shape:<24}{r['params'] / 1e6:>9.1f}M{r['megagpt_s'] * 1e3:>12.1f}{r['hf_s'] * 1e3:>10.1f}"
              f"{r['speedup']:>11.2f}x")
    print(f"results: {args.json}")


if __name__ == "__main__":
    main()
