#!/usr/bin/env bash
# megagpt entry point.
#   ./launch.sh              set up if needed, then the demo: bundled pages -> corpus -> train -> eval -> samples
#   ./launch.sh test [ARGS]  set up if needed, then the test suite (ARGS go to pytest)
#   ./launch.sh setup        only create/update .venv and prebuild DeepSpeed's CPU comm op
#   ./launch.sh tensorboard  TensorBoard on runs/, bound to 127.0.0.1:6006
#   ./launch.sh cluster-test [ARGS]  the SLURM and fault tests: a real one-node SLURM on localhost
#                            (installs Debian's slurmctld, slurmd, munge when missing; needs root)
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"

VENV=.venv
# The venv's bin first everywhere: its ninja, not /usr/bin/ninja, or DeepSpeed's JIT ops rebuild.
export PATH="$PWD/$VENV/bin:$PATH"

setup() {
  local stamp=$VENV/.requirements.sha256 want
  want=$(sha256sum requirements.txt | cut -d' ' -f1)
  if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    local py
    py=$(command -v python3.11 || command -v python3)
    echo "setup: creating $VENV with $("$py" --version) and the pinned requirements (about 2 minutes)"
    "$py" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.txt
    echo "$want" > "$stamp"
  fi
  # DeepSpeed JIT-compiles its shared-memory comm op at the first init (about a minute, then cached
  # in ~/.cache/torch_extensions). Do it once here rather than inside the first run or test.
  "$VENV/bin/python" - <<'PY'
import time
from deepspeed.accelerator import get_accelerator
import deepspeed.ops
builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
if builder is not None and deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
    t = time.time()
    builder.load(verbose=False)
    if time.time() - t > 5:
        print(f"setup: built DeepSpeed {builder.NAME} in {time.time() - t:.0f} s (cached from now on)")
PY
}

processes() {
  # All local accelerators; on a CPU-only machine, 2 processes (at most one per core).
  "$VENV/bin/python" - <<'PY'
import os
from deepspeed.accelerator import get_accelerator
accel = get_accelerator()
print(accel.device_count() if accel.device_name() != "cpu" else min(2, len(os.sched_getaffinity(0))))
PY
  # (DeepSpeed prints its accelerator notice on stdout; the count is the last line)
}

demo() {
  local start=$SECONDS
  if [ ! -f data/shards/manifest.json ]; then
    python -m pipelines.build --input data/sample/html --output data/shards \
      --train-tokenizer --vocab-size 8192 --valid-fraction 0.05
  else
    echo "demo: using the corpus already built in data/shards (delete it to rebuild)"
  fi
  rm -rf runs/demo
  deepspeed --num_gpus "$(processes | tail -n1)" megagpt/train.py --config configs/demo.yaml "$@"
  echo "demo: finished in $((SECONDS - start)) s; TensorBoard: ./launch.sh tensorboard (runs/demo)"
}

cmd=${1:-demo}
[ $# -gt 0 ] && shift
case "$cmd" in
  setup) setup ;;
  demo) setup; demo "$@" ;;
  test) setup; python -m pytest "$@" ;;
  cluster-test) setup; python -m pytest tests/cluster tests/faults "$@" ;;
  tensorboard) setup; exec tensorboard --logdir runs --host 127.0.0.1 --port "${PORT:-6006}" ;;
  *) echo "usage: ./launch.sh [demo|test|cluster-test|setup|tensorboard] [args]" >&2; exit 2 ;;
esac
