"""Do the GPU tests pass, and how fast and how lean does megagpt train on this GPU (10 minutes at most)?

One command for a machine's first GPU: the GPU tests and the training benchmarks.

    ./launch.sh gpu-check                 # sets up .venv-gpu (torch's CUDA build), then runs this
    python -m bench.gpu_train             # every part, on one GPU
    python -m bench.gpu_train --parts small,xl
    python -m bench.gpu_train --smoke     # toy shapes on whatever device there is (tests/perf runs it)

Each part runs in its own process with its own time budget (seconds, H100/H200 sized), so a part
that fails, runs out of memory or runs out of time is recorded as such and the others still run:

  tests      150  python -m pytest -m gpu tests/gpu (under --smoke only collected: they are not toy-sized)
  small      190  GPT-2 124M tokens/s and MFU. megagpt's engine as train.py builds it (build_engine
                  from configs/gpt2-small.yaml): at zero_stage=1, compiled as parallel.compile=auto
                  does on a GPU, and as the config leaves it on one GPU (zero_stage auto: ZeRO-3,
                  eager); against a nanoGPT-style reference of the same shape on the same batches
                  (bf16 autocast, fused AdamW, compiled when megagpt is). And whether SDPA's flash
                  kernel accepts megagpt's attention.
  precision  100  bf16 against fp32: 200 steps of GPT-2 124M from the same seed on the same batches
                  (a fixed random token chain the model learns: the loss falls from ln 50257 toward
                  ln 4); the max and final relative difference of the two loss curves. Both eager.
  xl         100  GPT-2 1.5B with ZeRO-3 and activation checkpointing (configs/gpt2-xl.yaml, one
                  GPU): peak allocated memory against megagpt.plan's estimate of the same Layout;
                  tokens/s and MFU.
  loss        40  The LM head + loss forward and backward at GPT-2 124M's width and vocabulary, 16 x
                  1024 tokens: peak memory and time of the chunked loss (megagpt.model.linear_cross_entropy)
                  against the plain logits path, and how closely their loss and gradients agree.

The parts stop early when the whole run reaches --budget (580 s). Before them, DeepSpeed's fused
Adam is built once (JIT, cached in ~/.cache/torch_extensions): that time is reported apart.
Results: bench/results/gpu_train-DATE-DEVICE[-smoke].json (the bench harness's schema) and a
printed table; each part's full output in runs/gpu-check/<part>.log. The code: bench/gpu/ (measure:
what the parts share; reference: the nanoGPT-style model; parts: the measurements; runner: each
part in a process of its own, within its budget; report: the table).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import harness
from bench.gpu.measure import BUDGETS, SIZES
from bench.gpu.parts import PARTS, run_part
from bench.gpu.runner import check
from megagpt.training.engine import on_cpu


def main() -> int:
    p = harness.parser(__doc__)
    p.add_argument("--parts", default=",".join(BUDGETS), type=lambda s: s.split(","),
                   help=f"comma-separated, of {', '.join(BUDGETS)} (default: all, in this order)")
    p.add_argument("--smoke", action="store_true", help="toy shapes: checks every part runs, anywhere")
    p.add_argument("--budget", type=float, default=float(sum(BUDGETS.values())),
                   help="seconds for all parts together (default: the sum of their budgets)")
    for key, (full, smoke, what) in SIZES.items():
        p.add_argument(f"--{key.replace('_', '-')}", type=int, help=f"{what} ({full}; --smoke {smoke})")
    p.add_argument("--run-part", choices=PARTS, help=argparse.SUPPRESS)  # one part, in this process
    p.add_argument("--part-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    for key, (full, smoke, _) in SIZES.items():
        if getattr(args, key) is None:
            setattr(args, key, smoke if args.smoke else full)
    if args.run_part:
        run_part(args)
        return 0
    unknown = set(args.parts) - set(BUDGETS)
    if unknown:
        p.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(BUDGETS)}")
    if on_cpu() and not args.smoke:
        p.error("DeepSpeed's accelerator here is the CPU: the GPU sizes would only run out of time; "
                "--smoke runs every part at toy size")
    return check(args, harness.question_of(__doc__))


if __name__ == "__main__":
    sys.exit(main())
