#!/usr/bin/env bash
# Launch one masksearch_jax entry point on every worker of a Cloud TPU VM slice, and keep it running
# through preemptions.
#
#   ./launch_tpu.sh --name=ms-v4 --zone=us-central2-b --accelerator=v4-32 --spot \
#       --workdir=gs://my-bucket/runs/rl-1p5b -- python -m masksearch_jax.train_rl --model=qwen2_5_1_5b
#
# Steps: create the slice (or reuse a READY one of that name); copy this checkout to every worker
# (or git clone --repo) and pip install it with jax[tpu]; run the command after `--` on all workers at
# once (`gcloud compute tpus tpu-vm ssh --worker=all`), appending --workdir=<gs://...>; each worker
# tees its output to ~/masksearch_logs/worker-<i>.log, fetched afterwards into --log_dir/attempt-<n>/.
# If the command fails because the slice was preempted or deleted, the slice is recreated and the
# same command re-run: the entry point resumes from the last orbax checkpoint in its --workdir (use
# gs:// so checkpoints outlive the VMs). --dry-run prints every command instead of running it.
#
# Flags (env fallback in brackets):
#   --name=NAME            TPU VM name [TPU_NAME; default masksearch-$USER]
#   --zone=ZONE            [TPU_ZONE; default us-central2-b]
#   --project=PROJECT      [TPU_PROJECT; default: gcloud's configured project]
#   --accelerator=TYPE     v4-8 ... v4-4096, v5p-8 ..., v5litepod-N (v5e-N accepted), v6e-N [TPU_ACCELERATOR; v4-8]
#   --version=RUNTIME      TPU VM runtime [TPU_RUNTIME; default per generation]
#   --spot | --preemptible capacity type (default: on-demand)
#   --workdir=gs://...     passed to the entry point as --workdir= [TPU_WORKDIR]
#   --install=copy|git     copy this checkout (default) or git clone --repo at --ref
#   --repo=URL --ref=REF   for --install=git [TPU_REPO, TPU_REF; ref default main]
#   --pip_extra=SPEC       extra pip requirement installed last (default 'jax[tpu]')
#   --no_install           skip installing on a reused READY slice (a recreated one is always installed)
#   --log_dir=DIR          local log folder (default ./tpu_logs/<name>)
#   --max_restarts=N       recreate-and-rerun attempts after preemption (default 5)
#   --delete_after         delete the slice when the command succeeded
#   --dry-run              print the commands; run nothing
set -euo pipefail

NAME="${TPU_NAME:-masksearch-${USER:-user}}"
ZONE="${TPU_ZONE:-us-central2-b}"
PROJECT="${TPU_PROJECT:-}"
ACCEL="${TPU_ACCELERATOR:-v4-8}"
RUNTIME="${TPU_RUNTIME:-}"
CAPACITY=""
WORKDIR="${TPU_WORKDIR:-}"
INSTALL="copy"
REPO="${TPU_REPO:-}"
REF="${TPU_REF:-main}"
PIP_EXTRA="jax[tpu]"
LOG_DIR=""
MAX_RESTARTS=5
DELETE_AFTER=0
NO_INSTALL=0
DRY_RUN=0
ENTRY=()
REMOTE_DIR="masksearch_jax_src"
POLL_S="${TPU_POLL_S:-30}"

die() { echo "launch_tpu.sh: $*" >&2; exit 2; }
log() { echo "[launch_tpu $(date -u +%H:%M:%S)] $*" >&2; }

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --name=*) NAME="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --accelerator=*|--accelerator_type=*|--accelerator-type=*) ACCEL="${1#*=}" ;;
    --version=*|--runtime=*) RUNTIME="${1#*=}" ;;
    --spot) CAPACITY="--spot" ;;
    --preemptible) CAPACITY="--preemptible" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --install=*) INSTALL="${1#*=}" ;;
    --repo=*) REPO="${1#*=}" ;;
    --ref=*) REF="${1#*=}" ;;
    --pip_extra=*) PIP_EXTRA="${1#*=}" ;;
    --log_dir=*) LOG_DIR="${1#*=}" ;;
    --max_restarts=*) MAX_RESTARTS="${1#*=}" ;;
    --delete_after) DELETE_AFTER=1 ;;
    --no_install) NO_INSTALL=1 ;;
    --dry-run|--dry_run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; ENTRY=("$@"); break ;;
    *) die "unknown flag '$1' (the entry point goes after --; see --help)" ;;
  esac
  shift
done

[[ ${#ENTRY[@]} -gt 0 ]] || die "no entry point: put it after --, e.g. -- python -m masksearch_jax.train_rl"
[[ "$MAX_RESTARTS" =~ ^[0-9]+$ ]] || die "--max_restarts must be a non-negative integer, got '$MAX_RESTARTS'"
[[ "$INSTALL" == copy || "$INSTALL" == git ]] || die "--install must be copy or git, got '$INSTALL'"
[[ "$INSTALL" == copy || -n "$REPO" ]] || die "--install=git needs --repo=URL"
LOG_DIR="${LOG_DIR:-./tpu_logs/$NAME}"

# v5e-N is the marketing name; the API calls it v5litepod-N.
if [[ "$ACCEL" =~ ^v5e-([0-9]+)$ ]]; then ACCEL="v5litepod-${BASH_REMATCH[1]}"; fi

# Hosts (= workers) in a slice: v2/v3/v4/v5p count TensorCores (8 per host); v5e/v6e count chips
# (one host up to 8 chips, 4 chips per host in larger slices).
num_workers() {
  local gen="${1%-*}" n="${1##*-}"
  [[ "$n" =~ ^[0-9]+$ ]] || die "cannot parse accelerator type '$1'"
  case "$gen" in
    v2|v3|v4|v5p) echo $(( n <= 8 ? 1 : n / 8 )) ;;
    v5litepod|v6e) echo $(( n <= 8 ? 1 : n / 4 )) ;;
    *) die "unknown TPU generation in '$1' (expected v2/v3/v4/v5p/v5litepod/v6e)" ;;
  esac
}
WORKERS="$(num_workers "$ACCEL")"

if [[ -z "$RUNTIME" ]]; then
  case "${ACCEL%-*}" in
    v4|v2|v3) RUNTIME="tpu-ubuntu2204-base" ;;
    v5litepod) RUNTIME="v2-alpha-tpuv5-lite" ;;
    v5p) RUNTIME="v2-alpha-tpuv5" ;;
    v6e) RUNTIME="v2-alpha-tpuv6e" ;;
  esac
fi

if [[ -n "$WORKDIR" && "$WORKDIR" != gs://* && "$WORKERS" -gt 1 ]]; then
  log "warning: --workdir=$WORKDIR is not gs://; checkpoints will not survive a preemption"
fi

# Shell-quote one word so printed commands can be pasted back into a shell.
q() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then printf '%s' "$1"
  else local sq="'"; printf "'%s'" "${1//$sq/$sq\\$sq$sq}"; fi
}
qjoin() { local out="" a; for a in "$@"; do out+="$(q "$a") "; done; printf '%s' "${out% }"; }

# Runs (or, with --dry-run, prints) one command.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then echo "+ $(qjoin "$@")"; return 0; fi
  log "$(qjoin "$@")"
  "$@"
}

exec 3>&1  # dry-run lines printed from inside $(...) still reach stdout, in order
GC=(--zone="$ZONE")
[[ -z "$PROJECT" ]] || GC+=(--project="$PROJECT")

tpu_state() {  # prints READY / CREATING / PREEMPTED / ... or NOT_FOUND
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "+ $(qjoin gcloud compute tpus tpu-vm describe "$NAME" "${GC[@]}" '--format=value(state)')" >&3
    echo NOT_FOUND; return 0
  fi
  gcloud compute tpus tpu-vm describe "$NAME" "${GC[@]}" '--format=value(state)' 2>/dev/null || echo NOT_FOUND
}

create_tpu() {
  local args=(gcloud compute tpus tpu-vm create "$NAME" "${GC[@]}" --accelerator-type="$ACCEL" --version="$RUNTIME")
  [[ -z "$CAPACITY" ]] || args+=("$CAPACITY")
  run "${args[@]}"
}

# Makes sure a READY slice exists; sets CREATED=1 if it was (re)created (so it needs installing).
# (Not used as an `if` condition: set -e must stay in force for the gcloud calls inside.)
CREATED=0
ensure_tpu() {
  local state tries=0
  CREATED=0
  while true; do
    state="$(tpu_state)"
    case "$state" in
      READY) log "reusing READY slice $NAME"; return 0 ;;
      NOT_FOUND) create_tpu; CREATED=1; return 0 ;;
      CREATING|STARTING|RESTARTING|REPAIRING)
        tries=$((tries + 1)); [[ $tries -le 120 ]] || die "slice $NAME stuck in $state"
        log "slice $NAME is $state; waiting ${POLL_S}s"; sleep "$POLL_S" ;;
      *) log "slice $NAME is $state; deleting and recreating"
         run gcloud compute tpus tpu-vm delete "$NAME" "${GC[@]}" --quiet
         create_tpu; CREATED=1; return 0 ;;
    esac
  done
}

ssh_all() { run gcloud compute tpus tpu-vm ssh "$NAME" "${GC[@]}" --worker=all --command="$1"; }

install_package() {
  local pip_cmd
  pip_cmd="cd ~/$REMOTE_DIR && pip install -q -e . && pip install -q -U $(q "$PIP_EXTRA")"
  if [[ "$INSTALL" == git ]]; then
    ssh_all "rm -rf ~/$REMOTE_DIR && git clone --depth=1 --branch=$(q "$REF") $(q "$REPO") ~/$REMOTE_DIR && $pip_cmd"
  else
    local here tarball
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    tarball="${TMPDIR:-/tmp}/masksearch_jax_src.tgz"
    run tar -czf "$tarball" --exclude=.venv --exclude=.git --exclude=__pycache__ --exclude=tpu_logs \
        --exclude=runs --exclude=artifacts -C "$here" .
    run gcloud compute tpus tpu-vm scp "$tarball" "$NAME:~/masksearch_jax_src.tgz" "${GC[@]}" --worker=all
    ssh_all "rm -rf ~/$REMOTE_DIR && mkdir -p ~/$REMOTE_DIR && tar -xzf ~/masksearch_jax_src.tgz -C ~/$REMOTE_DIR && $pip_cmd"
  fi
}

# The command every worker runs: the entry point (+ --workdir), its output teed to a per-worker log.
ENTRY_CMD="$(qjoin "${ENTRY[@]}")"
[[ -z "$WORKDIR" ]] || ENTRY_CMD+=" $(q "--workdir=$WORKDIR")"
# shellcheck disable=SC2016  # $W and PIPESTATUS must expand on the worker, not here
WORKER_ID='W=$(curl -sf -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || hostname)'
# shellcheck disable=SC2016
REMOTE_CMD="cd ~/$REMOTE_DIR && export MASKSEARCH_DISTRIBUTED=1 && mkdir -p ~/masksearch_logs && $WORKER_ID && set -o pipefail && $ENTRY_CMD 2>&1 | tee ~/masksearch_logs/worker-\$W.log"

fetch_logs() {
  local dest="$LOG_DIR/attempt-$1" i
  run mkdir -p "$dest"
  for ((i = 0; i < WORKERS; i++)); do
    run gcloud compute tpus tpu-vm scp "$NAME:~/masksearch_logs/worker-$i.log" "$dest/" "${GC[@]}" --worker="$i" \
      || log "could not fetch worker $i's log"
  done
}

log "slice $NAME: $ACCEL ($WORKERS workers), runtime $RUNTIME, zone $ZONE${CAPACITY:+, $CAPACITY}"
[[ "$DRY_RUN" == 1 ]] || mkdir -p "$LOG_DIR" || die "cannot create --log_dir $LOG_DIR"
attempt=0
while true; do
  ensure_tpu
  if [[ $CREATED -eq 1 || ( $attempt -eq 0 && $NO_INSTALL -eq 0 ) ]]; then install_package; fi
  rc=0
  if [[ "$DRY_RUN" == 1 ]]; then
    ssh_all "$REMOTE_CMD"
  else
    ssh_all "$REMOTE_CMD" 2>&1 | tee "$LOG_DIR/attempt-$attempt.all.log" || rc=$?
  fi
  fetch_logs "$attempt"
  if [[ $rc -eq 0 ]]; then
    log "entry point finished on all $WORKERS workers (logs in $LOG_DIR)"
    break
  fi
  state="$(tpu_state)"
  if [[ "$state" == READY ]]; then
    die "entry point failed with status $rc on a healthy slice; see $LOG_DIR/attempt-$attempt*"
  fi
  attempt=$((attempt + 1))
  if [[ $attempt -gt $MAX_RESTARTS ]]; then
    die "slice $NAME is $state after $MAX_RESTARTS restarts; giving up"
  fi
  log "slice $NAME is $state (preempted?); restart $attempt/$MAX_RESTARTS resumes from ${WORKDIR:-the default workdir of the entry point}"
done

if [[ "$DELETE_AFTER" == 1 ]]; then
  run gcloud compute tpus tpu-vm delete "$NAME" "${GC[@]}" --quiet
fi
