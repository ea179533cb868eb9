# Shell shared by the cluster/*.slurm scripts; sourced, never run.
#
# A batch script runs from a copy in slurmd's spool, not from the checkout, so each script finds the
# checkout as $MEGAGPT_ROOT, else the folder sbatch was called from, and sources this file from there.
# shellcheck shell=bash

# The status cluster/gpt2_xl.slurm requeues on: megagpt.preemption.REQUEUE_EXIT_CODE (EX_TEMPFAIL).
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

# torch.distributed's rendezvous from SLURM's allocation: the first node hosts the store.
export_rendezvous() {
  MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)}
  # A port of the job's own unless given: two jobs sharing a first node do not collide.
  MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
  WORLD_SIZE=$SLURM_NTASKS
  export MASTER_ADDR MASTER_PORT WORLD_SIZE
  note "job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}): $SLURM_NTASKS tasks on $SLURM_JOB_NUM_NODES node(s) [$SLURM_JOB_NODELIST], rendezvous $MASTER_ADDR:$MASTER_PORT"
}

# One task per GPU (or CPU rank). A task that dies ends the step at once (--kill-on-bad-exit), and
# srun names it ("task N" = rank N). Each task gets the variables torch.distributed reads.
# shellcheck disable=SC2016,SC2034  # expanded per task, not here; used by the sourcing scripts
RANK_ENV=(bash -c 'export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS LOCAL_WORLD_SIZE=${SLURM_STEP_TASKS_PER_NODE%%[(,]*}; exec "$@"' rank)

# Signals SLURM sends the batch shell (USR1 from --signal=B:USR1@..., TERM on preemption, requeue or
# scancel) are passed to the running step; the trainer checkpoints and exits with REQUEUE_EXIT_CODE.
STEP_PID=""
STOP_SIGNAL=""
forward_signal() {
  # shellcheck disable=SC2034  # read by the sourcing scripts
  STOP_SIGNAL=$1
  note "SIG$1 received, passing it to the ranks"
  [ -z "$STEP_PID" ] || kill -s "$1" "$STEP_PID" 2>/dev/null || true
}
trap 'forward_signal USR1' USR1
trap 'forward_signal TERM' TERM

# Run a job step in the background (bash runs traps only between commands, so a step in the
# foreground would hold a signal back until it ended); returns the step's exit status.
run_step() {
  local status=0 again
  "$@" &
  STEP_PID=$!
  while kill -0 "$STEP_PID" 2>/dev/null; do
    wait "$STEP_PID" && status=0 || status=$?
  done
  # > 128 may only mean a trap woke `wait` as the step ended: ask for the step's own status.
  if [ "$status" -gt 128 ]; then
    wait "$STEP_PID" 2>/dev/null && again=0 || again=$?
    [ "$again" = 127 ] || status=$again  # 127: already collected, $status was its own
  fi
  STEP_PID=""
  return "$status"
}
