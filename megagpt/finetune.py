"""Fine-tune a pre-trained GPT on a labelled task, as GPT-1 did.

    python -m megagpt.finetune --checkpoint runs/demo --task multiple_choice \
        --train mc_train.jsonl --valid mc_valid.jsonl --out runs/demo-mc
    deepspeed --num_gpus 2 megagpt/finetune.py --checkpoint ... --zero-stage 3    # any launcher

The command only; the code is megagpt.tasks.finetune.
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # started as a file by a launcher: import the package, not siblings
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from megagpt.tasks.finetune import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
