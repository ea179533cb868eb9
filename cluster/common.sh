# Shell shared by the cluster/*.slurm scripts; sourced, never run.
#
# A batch script runs from a copy in slurmd's spool, not from the checkout, so each script finds the
# checkout as $MEGAGPT_ROOT, else the folder sbatch was called from, and sources this file from there.
# shellcheck shell=bash

# The status the trainer exits with after checkpointing on a stop signal:
# megagpt.training.preemption.REQUEUE_EXIT_CODE (EX_TEMPFAIL). What it publishes decides, not srun's status.
# shellcheck disable=SC2034  # read by the sourcing scripts
readonly REQUEUE_EXIT_CODE=75

die() {
  echo "${SCRIPT_NAME:-megagpt}: error: $*" >&2
  exit 2
}

note() {
  echo "${SCRIPT_NAME:-megagpt}: $(date -u +%H:%M:%S) $*"
}

# cd into the checkout and put its venv first on PATH: its ninja, not another, or DeepSpeed rebuilds
# its JIT ops (a cluster site may instead load modules and activate its own environment beforehand).
enter_checkout() {
  cd "$MEGAGPT_ROOT" || die "cannot cd to MEGAGPT_ROOT=$MEGAGPT_ROOT"
  [ -f megagpt/train.py ] || die "$MEGAGPT_ROOT is not a megagpt checkout: submit from the checkout or set MEGAGPT_ROOT"
  if [ -x .venv/bin/python ]; then
    # Resolved, as in the shebangs pip wrote: DeepSpeed's op cache is keyed by the paths it compiles.
    PATH="$(cd .venv && pwd -P)/bin:$PATH"
    export PATH
  fi
  command -v python >/dev/null || die "no python on PATH: activate the environment (./launch.sh setup) before sbatch"
}

# torch.distributed's rendezvous from SLURM's allocation: the first node hosts the store. MASTER_ADDR
# is never taken from the environment: sbatch exports the submitting shell's, and a leftover
# `localhost` there would leave the other nodes' ranks waiting for the rendezvous timeout.
export_rendezvous() {
  local first addr
  first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
  [ -n "$first" ] || die "cannot name the first node of SLURM_JOB_NODELIST=$SLURM_JOB_NODELIST (scontrol show hostnames)"
  # An address every node can reach (as torchtitan's launch does), not a name each node resolves alone.
  addr=$(getent ahostsv4 "$first" | awk 'NR == 1 { print $1 }')
  [ -n "$addr" ] || die "cannot resolve the first node $first to an address (getent ahostsv4 $first)"
  if [ -n "${MASTER_ADDR:-}" ] && [ "$MASTER_ADDR" != "$addr" ]; then
    note "ignoring MASTER_ADDR=$MASTER_ADDR from the submitting shell: the rendezvous is on $first"
  fi
  MASTER_ADDR=$addr
  # A port of the job's own unless given: two jobs sharing a first node do not collide.
  MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
  WORLD_SIZE=$SLURM_NTASKS
  export MASTER_ADDR MASTER_PORT WORLD_SIZE
  note "job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}): $SLURM_NTASKS tasks on $SLURM_JOB_NUM_NODES node(s) [$SLURM_JOB_NODELIST], rendezvous $first ($MASTER_ADDR):$MASTER_PORT"
}

# Each task's CPUs. Since Slurm 22.05 srun does not inherit sbatch's --cpus-per-task: without it a
# task gets one CPU (or, unbound, every rank starts a thread per core of the node). SRUN_CPUS_PER_TASK
# reaches every srun of the job, and OMP_NUM_THREADS (torch's intra-op threads) is set from it.
bind_cpus() {
  CPUS_PER_TASK=${SLURM_CPUS_PER_TASK:-1}
  SRUN_CPUS_PER_TASK=$CPUS_PER_TASK
  OMP_NUM_THREADS=$CPUS_PER_TASK
  export CPUS_PER_TASK SRUN_CPUS_PER_TASK OMP_NUM_THREADS
}

# NCCL settings of the job's own, not the submitting shell's (sites with --export=NONE pass none):
# a collective that times out (a lost rank) raises instead of hanging; warnings only. A value already
# in the environment wins; the inter-node interface (NCCL_SOCKET_IFNAME, NCCL_IB_HCA) is the site's.
nccl_defaults() {
  export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
  export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
}

# DeepSpeed's JIT ops (the shared-memory comm op on CPU, fused Adam on GPU), built once by the batch
# shell before the ranks start, under an flock of the extensions folder: the lock is the kernel's, so
# a job preempted mid-build leaves none behind, and 16 ranks find the op built. torch's own build
# lock (a `lock` file) is left behind by a killed build: under the flock, one in a folder idle for
# MEGAGPT_STALE_BUILD_S (default 600) is stale and removed. MEGAGPT_PREBUILD_OPS=0 skips all this
# (ops installed into the DeepSpeed wheel: DS_BUILD_OPS=1).
prebuild_ops() {
  [ "${MEGAGPT_PREBUILD_OPS:-1}" != 0 ] || return 0
  local dir=${TORCH_EXTENSIONS_DIR:-$HOME/.cache/torch_extensions} stale=${MEGAGPT_STALE_BUILD_S:-600}
  mkdir -p "$dir"
  (
    flock -w 3600 9 || die "no lock on $dir/.megagpt-build.lock within an hour"
    remove_stale_build_locks "$dir" "$stale"
    python - <<'PY' || die "building DeepSpeed's ops in $dir failed (see above)"
import time
import deepspeed.ops
from deepspeed.accelerator import get_accelerator
accelerator = get_accelerator()
names = ["ShareMemCommBuilder"] if accelerator.device_name() == "cpu" else ["FusedAdamBuilder"]
for name in names:
    builder = accelerator.create_op_builder(name)
    if builder is not None and deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        t = time.time()
        builder.load(verbose=False)
        print(f"DeepSpeed op {builder.NAME} ready in {time.time() - t:.0f} s", flush=True)
PY
  ) 9>"$dir/.megagpt-build.lock"
}

# torch's build lock files (DIR/<python-accelerator>/<op>/lock) in folders where nothing changed for
# STALE seconds: left by a build that was killed. Call it holding prebuild_ops's flock.
remove_stale_build_locks() {
  local dir=$1 stale=$2 lock
  while IFS= read -r lock; do
    if [ -z "$(find "$(dirname "$lock")" -newermt "-$stale seconds" -print -quit)" ]; then
      note "removing the stale build lock $lock (its folder is idle for over $stale s)"
      rm -f "$lock"
    fi
  done < <(find "$dir" -mindepth 2 -maxdepth 3 -name lock -type f)
}

# One task per GPU (or CPU rank). A task that dies ends the step (--kill-on-bad-exit), and srun names
# it ("task N" = rank N). Each task gets the variables torch.distributed reads. --export=ALL: on a site
# whose default is --export=NONE, srun would otherwise start the ranks without what this script set.
# shellcheck disable=SC2016,SC2034  # expanded per task, not here; used by the sourcing scripts
RANK_ENV=(bash -c 'export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS LOCAL_WORLD_SIZE=${SLURM_STEP_TASKS_PER_NODE%%[(,]*}; exec "$@"' rank)

# Signals. USR1 (--signal=B:USR1@..., scancel --batch --signal=USR1) reaches the batch shell only;
# TERM reaches it on preemption, requeue or scancel (with every step: slurmstepd delivers it to the
# ranks too) and on `scancel --full --signal=TERM` (the batch shell and its children only). The batch
# shell never forwards a signal to srun, which turns a TERM it receives into SIGKILL of every task
# ("srun: forcing job termination"): it asks slurmctld to signal the job's steps (scancel without
# --batch/--full), so slurmstepd delivers the signal to the ranks. A rank takes a second copy as one.
STOP_SIGNAL=""
on_signal() {
  # shellcheck disable=SC2034  # read by the sourcing scripts
  STOP_SIGNAL=$1
  note "SIG$1 received, passing it to the ranks (scancel --signal=$1 of the job's steps)"
  scancel --signal="$1" "$SLURM_JOB_ID" 2>/dev/null || note "scancel --signal=$1 $SLURM_JOB_ID failed (the job is ending?)"
}
trap 'on_signal USR1' USR1
trap 'on_signal TERM' TERM

# Run a job step (srun, or mpiexec that starts srun) detached from the batch shell: in a session of
# its own and reparented away (double fork), so that a signal sent to the batch step's processes
# (scancel --full, the TERM of a requeue or preemption) does not reach srun. The batch shell polls
# for the status the step's wrapper writes, a second at a time, so its traps run at once.
# Returns the step's exit status.
run_step() {
  local dir pid status
  dir=$(mktemp -d "${TMPDIR:-/tmp}/megagpt-step.XXXXXX")
  # shellcheck disable=SC2016  # expanded by the wrapper
  (setsid bash -c 'dir=$1; shift; echo "$$" >"$dir/pid"; "$@"; echo "$?" >"$dir/status.tmp"; mv "$dir/status.tmp" "$dir/status"' \
    step "$dir" "$@" </dev/null &)
  until [ -e "$dir/status" ]; do
    pid=$(cat "$dir/pid" 2>/dev/null || true)
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null && [ ! -e "$dir/status" ]; then
      note "the step's wrapper (pid $pid) died without a status"
      echo 137 >"$dir/status"
    fi
    sleep 1 &
    wait $! || true
  done
  status=$(cat "$dir/status")
  rm -rf "$dir"
  return "$status"
}
