#!/usr/bin/env bash
# megagpt entry point.
#   ./launch.sh              set up if needed, then the demo: bundled pages -> corpus -> train -> eval -> samples
#   ./launch.sh test [ARGS]  set up if needed, then the test suite (ARGS go to pytest)
#   ./launch.sh setup        only create/update .venv and prebuild DeepSpeed's CPU comm op
#   ./launch.sh tensorboard  TensorBoard on runs/, bound to 127.0.0.1:6006
#   ./launch.sh free-port    the port the demo's ranks meet on: $MASTER_PORT if set (refused, naming it,
#                            when in use), else a free one (deepspeed's 29500 may be another job's)
#   ./launch.sh cluster-test [ARGS]  the SLURM and fault tests: a real one-node SLURM on localhost
#                            (installs Debian's slurmctld, slurmd, munge when missing; needs root)
#   ./launch.sh gpu-check [ARGS]  on an NVIDIA GPU: sets up .venv-gpu with torch's CUDA build, then
#                            the GPU tests and benchmarks in at most 10 minutes (python -m bench.gpu_train;
#                            ARGS go to it; --smoke runs them at toy size, on a CPU too)
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"

cmd=${1:-demo}
[ $# -gt 0 ] && shift

VENV=.venv
# gpu-check on a GPU host gets a venv of its own: pip install torch==2.13.0 there brings the CUDA
# build (PyPI's Linux x86_64 wheel), while .venv keeps the CPU build that the tests and CI use.
if [ "$cmd" = gpu-check ] && command -v nvidia-smi >/dev/null; then
  VENV=.venv-gpu
fi
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
  # ZeRO-Infinity's NVMe offload needs DeepSpeed's async_io op, which builds against libaio.
  if [ ! -e /usr/include/libaio.h ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "setup: installing libaio-dev (DeepSpeed's async_io op, for parallel.offload_*=nvme)"
    apt-get install -y -qq libaio-dev >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq libaio-dev; }
  fi
  # DeepSpeed JIT-compiles its ops at first use (about a minute each, then cached in
  # ~/.cache/torch_extensions): the shared-memory comm op at every init, CPU Adam and async_io
  # with offload. Do it once here rather than inside the first run or test.
  "$VENV/bin/python" - <<'PY'
import time
from deepspeed.accelerator import get_accelerator
import deepspeed.ops
for name in ("ShareMemCommBuilder", "CPUAdamBuilder", "AsyncIOBuilder"):
    builder = get_accelerator().create_op_builder(name)
    if builder is None or not builder.is_compatible(verbose=False):
        print(f"setup: DeepSpeed's {name} cannot be built here; what needs it will say so")
        continue
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

master_port() {
  python3 - "${MASTER_PORT:-}" <<'PY'
import socket, sys
want = sys.argv[1]
with socket.socket() as s:
    try:
        s.bind(("", int(want or 0)))
    except (OSError, ValueError) as e:
        sys.exit(f"launch.sh: MASTER_PORT={want} cannot be used ({getattr(e, 'strerror', None) or e}): "
                 "set MASTER_PORT to another port, or unset it to use a free one")
    print(s.getsockname()[1])
PY
}

demo() {
  local start=$SECONDS port
  if [ ! -f data/shards/manifest.json ]; then
    python -m pipelines.build --input data/sample/html --output data/shards \
      --train-tokenizer --vocab-size 8192 --valid-fraction 0.05
  else
    echo "demo: using the corpus already built in data/shards (delete it to rebuild)"
  fi
  rm -rf runs/demo
  port=$(master_port)  # picked just before use: another job may take a port meanwhile
  deepspeed --num_gpus "$(processes | tail -n1)" --master_port "$port" megagpt/train.py \
    --config configs/demo.yaml "$@"
  echo "demo: finished in $((SECONDS - start)) s; TensorBoard: ./launch.sh tensorboard (runs/demo)"
}

gpu_check() {
  if [ "$VENV" != .venv-gpu ] && [[ " $* " != *" --smoke "* ]]; then
    echo "gpu-check: no NVIDIA GPU here (nvidia-smi not found): it measures a GPU." \
      "'./launch.sh gpu-check --smoke' runs every part at toy size on this CPU" >&2
    exit 2
  fi
  setup
  if [ "$VENV" = .venv-gpu ]; then
    # The CUDA build, a GPU it sees, and what DeepSpeed's JIT ops and torch.compile build with.
    python - <<'PY'
import shutil, sys, sysconfig
from pathlib import Path
import torch
from torch.utils.cpp_extension import CUDA_HOME
if torch.version.cuda is None:
    sys.exit(f"gpu-check: .venv-gpu has torch {torch.__version__}, a CPU build: the pip index it "
             "was installed from serves no CUDA build; point PIP_INDEX_URL at one that does, "
             "delete .venv-gpu and rerun")
if not torch.cuda.is_available():
    sys.exit(f"gpu-check: torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU; "
             "nvidia-smi shows the driver's CUDA version, which must be at least that")
missing = [what for what, ok in (
    ("the CUDA toolkit's nvcc (set CUDA_HOME), for DeepSpeed's fused Adam",
     CUDA_HOME is not None and (Path(CUDA_HOME) / "bin/nvcc").exists()),
    ("a C++ compiler (g++)", shutil.which("g++") is not None),
    ("Python's headers (python3-dev), for DeepSpeed's ops and torch.compile",
     (Path(sysconfig.get_paths()["include"]) / "Python.h").exists()),
) if not ok]
for what in missing:
    print(f"gpu-check: warning: no {what}: the parts that need it will fail", file=sys.stderr)
PY
  fi
  python -m bench.gpu_train "$@"
}

case "$cmd" in
  setup) setup ;;
  demo) setup; demo "$@" ;;
  test) setup; python -m pytest "$@" ;;
  cluster-test) setup; python -m pytest tests/cluster tests/faults "$@" ;;
  free-port) master_port ;;
  tensorboard) setup; exec tensorboard --logdir runs --host 127.0.0.1 --port "${PORT:-6006}" ;;
  gpu-check) gpu_check "$@" ;;
  *) echo "usage: ./launch.sh [demo|test|cluster-test|gpu-check|setup|tensorboard|free-port] [args]" >&2; exit 2 ;;
esac
