"""Sample continuations from a checkpoint.

    python -m megagpt.generate --checkpoint runs/demo --prompt "The government said" \
        --prompt "Scientists have" --max-new 60 --temperature 0.8 --top-k 40 --seed 1

The command only; the code is megagpt.tasks.generate.
"""

import sys

from megagpt.tasks.generate import main

if __name__ == "__main__":
    sys.exit(main())
