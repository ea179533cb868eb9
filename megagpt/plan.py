"""Plan a parallel layout: memory per GPU and step time of every feasible choice.

    python -m megagpt.plan --model gpt2-xl --gpus 16 --gpu-mem 80
    python -m megagpt.plan --config configs/gpt2-xl.yaml --gpus 16 --gpu-mem 80 --global-batch 512
    python -m megagpt.plan --model gpt3-13b --gpus 16 --gpu-mem 40        # GPT-3's batch of 1024

The command only; the code is megagpt.sizing.planner.
"""

import sys

from megagpt.sizing.planner import main

if __name__ == "__main__":
    sys.exit(main())
