"""Zero- and few-shot evaluation of a checkpoint (GPT-2 / GPT-3 tasks).

    python -m megagpt.evaluate --checkpoint runs/demo --task wikitext2
    python -m megagpt.evaluate --checkpoint runs/demo --task lambada --json lambada.json --tb runs/demo
    python -m megagpt.evaluate --checkpoint CKPT --task choice --file hellaswag.jsonl \
        --shots 5 --train-file hellaswag_train.jsonl

The command only; the code is megagpt.tasks.evaluate.
"""

import sys

from megagpt.tasks.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
