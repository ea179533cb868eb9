"""Hugging Face interop: export a checkpoint to transformers, import one back.

    python -m megagpt.convert to-hf runs/demo hf/demo          # any checkpoint or model folder
    python -m megagpt.convert from-hf hf/demo models/demo      # a local save_pretrained folder

The command only; the code is megagpt.checkpoint.huggingface.
"""

import sys

from megagpt.checkpoint.huggingface import main

if __name__ == "__main__":
    sys.exit(main())
