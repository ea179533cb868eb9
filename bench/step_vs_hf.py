"""How fast is megagpt's training step against transformers' GPT2LMHeadModel of the same shape?

    python -m bench.step_vs_hf [--steps 20] [--vocab 50257] [--json bench/results/step_vs_hf-DATE.json]

One forward + backward + AdamW step (torch.optim.AdamW, fp32, the same batch) per iteration;
the two models alternate within one run so that machine noise hits both alike. Reports the
median step time of each and the ratio HF / megagpt (above 1: megagpt is faster).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from bench import harness
from megagpt.config import ModelConfig
from megagpt.model.gpt import GPT

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


def summarize(settings: dict[str, Any], figures: dict[str, Any]) -> harness.Result:
    """The harness result of a run: `figures` holds results (one a shape)."""
    table = harness.Table(["shape (L/H/C/T x B)", "params M", "megagpt ms", "HF ms", "HF/megagpt"])
    for r in figures["results"]:
        shape = f"{r['n_layer']}/{r['n_head']}/{r['n_embd']}/{r['block_size']} x {r['batch']}"
        table.add(shape, round(r["params"] / 1e6, 1), round(r["megagpt_s"] * 1e3, 1),
                  round(r["hf_s"] * 1e3, 1), f"{r['speedup']:.2f}x")
    return harness.Result(
        question=harness.question_of(__doc__), settings=settings, figures=figures, table=table,
        reference="transformers' GPT2LMHeadModel of the same shape and weights, alternating in the same run",
        goal=harness.Goal("megagpt's step faster than HF's at every shape",
                          all(r["speedup"] > 1 for r in figures["results"])))


def main() -> None:
    p = harness.parser(__doc__)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--vocab", type=int, default=50257)
    args = p.parse_args()
    settings = {"steps": args.steps, "vocab": args.vocab, "threads": torch.get_num_threads(), "device": "cpu",
                "optimizer": "torch.optim.AdamW, fp32"}
    figures = {"results": [bench(s, args.steps, args.vocab) for s in SHAPES]}
    harness.report("step_vs_hf", summarize(settings, figures), args.json)


if __name__ == "__main__":
    main()
