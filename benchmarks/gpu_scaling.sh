#!/usr/bin/env bash
# The bounded GPU run of the pretraining-scaling issue (issue 23, item 4), for a session that is lent a GPU:
# first benchmarks/gpu_check.sh (the GPU figures still owed: module map, chain, pretraining against HF in
# bf16), then the sweep's largest points, pretraining only, on gpu_check's pile-up-200 events: the paper's
# model size over the whole detector's vocabulary with the full and with the layer softmax, each trained
# for SCALING_SECONDS, evaluated against the count baseline (benchmarks/pretraining_scaling.py).
#
#   PYTHONPATH=. OUT=/some/folder bash benchmarks/gpu_scaling.sh    # one GPU: gpu_check's 460 s of budgets,
#                                                                   # then 150 s here: about 10 minutes
#   bash benchmarks/gpu_scaling.sh --smoke                          # the same, tiny, on the CPU
#
# Output in OUT (default runs/gpu_scaling): gpu_check/ (its summary.json and parts), scaling/ (scaling.json,
# scaling.md, scaling.png, one stage folder per point), scaling.yaml (the sweep it ran), summary.json
# (status and seconds of both parts). Exit status 1 if a part did not finish. OUT must be empty or new.

set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

MODE=full
for arg in "$@"; do
    case $arg in
        --smoke) MODE=smoke ;;
        *) echo "usage: bash benchmarks/gpu_scaling.sh [--smoke]" >&2; exit 2 ;;
    esac
done
if [[ $MODE == full ]]; then
    SCALING_SECONDS=30     # training wall clock per point
    SCALING_BUDGET=150     # the part's budget: 2 points of 30 s, their track caches and evaluations
    CHECK_ARGS=()
else
    SCALING_SECONDS=10
    SCALING_BUDGET=300
    CHECK_ARGS=(--smoke)
fi

source benchmarks/common.sh
pick_python
fresh_out_dir gpu_scaling runs/gpu_scaling
LOG="$OUT_DIR/gpu_scaling.log"
log() { echo "[gpu_scaling $(date -u +%H:%M:%S)] $*" | tee -a "$LOG" >&2; }

# part 1: the GPU check, with its own budgets and summary
start=$(date +%s)
check_rc=0
OUT="$OUT_DIR/gpu_check" PYTHON="$PY" bash benchmarks/gpu_check.sh "${CHECK_ARGS[@]}" >>"$LOG" 2>&1 || check_rc=$?
check_s=$(( $(date +%s) - start ))
log "gpu_check: rc $check_rc after $check_s s ($OUT_DIR/gpu_check/summary.json)"

# part 2: the sweep's largest points, pretraining only, on the check's events and tracking_bert config
cat >"$OUT_DIR/scaling.yaml" <<YAML
out_dir: $OUT_DIR/scaling
tracking_bert: $OUT_DIR/gpu_check/configs/tracking_bert.yaml
input_dir: $OUT_DIR/gpu_check/feature_store
points:
  - name: whole_detector_all
    keys: {volumes: null, mdm_candidates: all, max_time_s: $SCALING_SECONDS}
  - name: whole_detector_layer
    keys: {volumes: null, mdm_candidates: layer, max_time_s: $SCALING_SECONDS}
YAML
start=$(date +%s)
scaling_rc=0
timeout --kill-after=3 "$SCALING_BUDGET" "$PY" benchmarks/pretraining_scaling.py "$OUT_DIR/scaling.yaml" \
    >>"$LOG" 2>&1 || scaling_rc=$?
scaling_s=$(( $(date +%s) - start ))
log "scaling: rc $scaling_rc after $scaling_s s ($OUT_DIR/scaling/scaling.md)"

status() { [[ $1 == 0 ]] && echo ok || { [[ $1 == 124 || $1 == 137 ]] && echo timed_out || echo failed; }; }
cat >"$OUT_DIR/summary.json" <<JSON
{
  "run": "benchmarks/gpu_scaling.sh",
  "mode": "$MODE",
  "parts": {
    "gpu_check": {"status": "$(status $check_rc)", "seconds": $check_s, "return_code": $check_rc},
    "scaling": {"status": "$(status $scaling_rc)", "seconds": $scaling_s, "return_code": $scaling_rc, "budget_s": $SCALING_BUDGET}
  }
}
JSON
cat "$OUT_DIR/summary.json"
[[ $check_rc == 0 && $scaling_rc == 0 ]]
