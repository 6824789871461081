#!/usr/bin/env bash
# The bounded GPU check (issue 12, item 5): one script that runs on one GPU, in at most 8 minutes, the
# pretraining throughput against HF, the pile-up-200 chain per stage, the paper-size TrackingBERT and a
# pile-up-200 A/B, each at a size that fits, and writes what it measured as JSON.
#
#   PYTHONPATH=. OUT=/some/folder bash benchmarks/gpu_check.sh   # one H200, 16 cores: the image's torch,
#                                                                # PyG, Lightning, transformers (no pip)
#   bash benchmarks/gpu_check.sh --smoke                         # the same parts, tiny, on the CPU
#   bash benchmarks/gpu_check.sh --sizes [--smoke]               # print the size table, run nothing
#
# Parts, in order, each under `timeout` with its own budget (seconds, full run / smoke):
#   configs     25 /  60  this run's configs in OUT/configs (configs/ab/gpu_check.yaml and the files it
#                         names, folders moved under OUT, sizes from the table below); environment.json
#   simulate    30 /  60  `tb simulate`: 100 pile-up-200 events (one process per core)
#   throughput  30 /  60  (a) benchmarks/pretrain_throughput.py: TrackingBERT against HF
#                         BertForPreTraining, full training steps, cuda + bf16 -> throughput.json
#   chain       70 / 180  (b) benchmarks/inference_speed.py: the baseline chain at pile-up 200, per stage,
#                         with and without the edge filter, its own small setup -> chain.json
#   pretrain   160 / 180  (c) data reading of the 100 events, then TrackingBERT at the paper's size for
#                         60 s of training, its inference and evaluation: MDM against the count
#                         baseline on the 4 test events -> pretrain.json
#   ab         145 / 300  (d) `tb ab` of configs/ab/gpu_check.yaml: pile-up 200, 2 seeds, 2 test events,
#                         TrackingBERT from "pretrain" -> ab.json; its inference_s_per_event per arm
#                         and stage is the chain of both arms (part b times the baseline chain only)
#   total      460 s (7 min 40 s) of budgets on the GPU, under the 8 minutes asked for; the smoke's
#              budgets (14 min) leave room for a loaded CPU: it takes about 70 s on a quiet 2-core one.
# The GPU budgets are estimates, not measurements: on the 2-core CPU of the repository's development
# machine, at pile-up 200, data reading took 0.24 s per event, TrackingBERT inference and evaluation
# 0.25 s per event, a module-map graph (map of 8 events, 1.5 M edges) 0.6 s, simulation 1.8 s per
# event and process; the GPU parts (training, the GNN) were not measured. The first GPU run tells.
#
# Output, all in OUT (default runs/gpu_check; the device runner sets $OUT): one JSON per part
# (environment, throughput, chain, pretrain, ab), summary.json (status, seconds, return code and budget
# of every part), gpu_check.log (everything the parts printed), and the parts' working folders. A part
# that fails or runs out of time is recorded as such and the next one runs (pretrain and ab need the
# simulated events, ab needs pretrain); the exit status is 1 if any part did not finish. The folder must be empty or new: a check does not resume an old run.
# Python: $PYTHON if set, else .venv/bin/python if there, else python3; PYTHONPATH gets the repo root.

set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

MODE=full
SIZES_ONLY=0
for arg in "$@"; do
    case $arg in
        --smoke) MODE=smoke ;;
        --sizes) SIZES_ONLY=1 ;;
        *) echo "usage: bash benchmarks/gpu_check.sh [--smoke] [--sizes]" >&2; exit 2 ;;
    esac
done

# ---------------------------------------------------------------------------------- the size table
declare -A BUDGET
if [[ $MODE == full ]]; then
    PILEUP=200                # events of (c) and (d)
    SPLIT=92,4,4              # data reading: train, val, test events (100 simulated)
    MAP_EVENTS=16             # (d) module map learns from
    GRAPH_SPLIT=3,1,2         # (d) graphs: GNN train, val, test
    SEEDS=0,1                 # (d)
    TIMING_EVENTS=1           # (d) test events timed per arm and seed
    BOOTSTRAP=1000            # (d) bootstrap samples
    TB_SIZE=12,64,8,512       # (c) layers, embedding, heads, feed-forward: the paper's
    TB_BATCH=5000             # (c) pairs per batch: the paper's
    TB_SECONDS=60             # (c) training wall clock
    TB_EPOCHS=1000            # (c) never reached: TB_SECONDS decides
    WORKERS=4                 # (c) DataLoader workers
    GNN=64,6,5,10             # (d) hidden, iterations, epochs, training seconds per run
    ACCELERATOR=gpu
    PRECISION=bf16-mixed
    THROUGHPUT=(--device cuda --precision bf16-mixed --batch-size 5000 --steps 10 --repeats 5 --warmup 3)
    CHAIN=(--pileup 200 --events 1 --map-events 6 --filter-events 3 --filter-epochs 2 --threads 16
           --accelerator gpu)
    BUDGET=([configs]=25 [simulate]=30 [throughput]=30 [chain]=70 [pretrain]=160 [ab]=145)
else
    PILEUP=10
    SPLIT=12,2,2
    MAP_EVENTS=12
    GRAPH_SPLIT=4,1,2
    SEEDS=0,1
    TIMING_EVENTS=1
    BOOTSTRAP=200
    TB_SIZE=2,16,2,32
    TB_BATCH=64
    TB_SECONDS=60
    TB_EPOCHS=1
    WORKERS=0
    GNN=8,2,1,60
    ACCELERATOR=cpu
    PRECISION=32-true
    THROUGHPUT=(--device cpu --batch-size 16 --steps 1 --repeats 2 --warmup 1 --threads 1)
    CHAIN=(--pileup 10 --events 1 --map-events 3 --filter-events 2 --filter-epochs 1 --threads 1
           --hidden 8 --iters 2 --accelerator cpu)
    BUDGET=([configs]=60 [simulate]=60 [throughput]=60 [chain]=180 [pretrain]=180 [ab]=300)
fi
IFS=, read -r GNN_HIDDEN GNN_ITERS GNN_EPOCHS GNN_SECONDS <<<"$GNN"
N_EVENTS=$(( $(tr , + <<<"$SPLIT") ))
BUDGET_TOTAL=$(( ${BUDGET[configs]} + ${BUDGET[simulate]} + ${BUDGET[throughput]} + ${BUDGET[chain]} \
    + ${BUDGET[pretrain]} + ${BUDGET[ab]} ))
if [[ $SIZES_ONLY == 1 ]]; then
    for name in MODE PILEUP SPLIT N_EVENTS MAP_EVENTS GRAPH_SPLIT SEEDS TIMING_EVENTS BOOTSTRAP TB_SIZE TB_BATCH \
        TB_SECONDS TB_EPOCHS WORKERS GNN ACCELERATOR PRECISION BUDGET_TOTAL; do
        echo "$name=${!name}"
    done
    echo "THROUGHPUT=${THROUGHPUT[*]}"
    echo "CHAIN=${CHAIN[*]}"
    for name in configs simulate throughput chain pretrain ab; do echo "BUDGET_$name=${BUDGET[$name]}"; done
    exit 0
fi

# ---------------------------------------------------------------------------------- environment
source benchmarks/common.sh
pick_python
fresh_out_dir gpu_check runs/gpu_check
# the smoke skips the real pile-up-200 hits of ../shared/trackml (--shared: a folder without them)
[[ $MODE == smoke ]] && CHAIN+=(--shared "$OUT_DIR/chain/no_real_hits")
LOG="$OUT_DIR/gpu_check.log"
PARTS="$OUT_DIR/parts.tsv"
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
T0=$(date +%s.%N)

seconds_since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

log() { echo "[gpu_check $(date -u +%H:%M:%S)] $*" | tee -a "$LOG" >&2; }

# run_part NAME STDOUT_FILE COMMAND...: COMMAND under timeout with the part's budget; stdout goes to
# STDOUT_FILE (or the log when it is -), stderr to the log; one line of parts.tsv records the outcome.
run_part() {
    local name=$1 stdout=$2
    shift 2
    local budget=${BUDGET[$name]} rc=0 start seconds status
    [[ $stdout == - ]] && stdout=$LOG
    log "part $name (budget ${budget} s): $*"
    start=$(date +%s.%N)
    timeout --kill-after=3 "$budget" "$@" >>"$stdout" 2>>"$LOG" || rc=$?
    seconds=$(seconds_since "$start")
    case $rc in
        0) status=ok ;;
        124 | 137) status=timed_out ;;
        *) status=failed ;;
    esac
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$seconds" "$rc" >>"$PARTS"
    log "part $name: $status after $seconds s (rc $rc)"
}

HELPER=("$PY" benchmarks/gpu_check.py)
log "mode $MODE, python $PY, output $OUT_DIR"

run_part configs - "${HELPER[@]}" configs --out "$OUT_DIR" --split "$SPLIT" --map-events "$MAP_EVENTS" \
    --graph-split "$GRAPH_SPLIT" --seeds "$SEEDS" --timing-events "$TIMING_EVENTS" --bootstrap "$BOOTSTRAP" \
    --tb-size "$TB_SIZE" --tb-batch "$TB_BATCH" --tb-seconds "$TB_SECONDS" --tb-epochs "$TB_EPOCHS" \
    --workers "$WORKERS" --gnn-hidden "$GNN_HIDDEN" --gnn-iters "$GNN_ITERS" --gnn-epochs "$GNN_EPOCHS" \
    --gnn-seconds "$GNN_SECONDS" --accelerator "$ACCELERATOR" --precision "$PRECISION"
run_part simulate - "$PY" -m tb_plugin.cli simulate --events "$N_EVENTS" --pileup "$PILEUP" --seed 1 \
    --out "$OUT_DIR/simulated"
run_part throughput "$OUT_DIR/throughput.json" "$PY" benchmarks/pretrain_throughput.py "${THROUGHPUT[@]}"
run_part chain - "$PY" benchmarks/inference_speed.py "${CHAIN[@]}" --work "$OUT_DIR/chain" \
    --out "$OUT_DIR/chain.json"
run_part pretrain - "${HELPER[@]}" pretrain --out "$OUT_DIR"
run_part ab - "${HELPER[@]}" ab --out "$OUT_DIR"

# ---------------------------------------------------------------------------------- summary.json
WALL=$(seconds_since "$T0")
FAILED=0
{
    printf '{\n  "check": "benchmarks/gpu_check.sh",\n  "mode": "%s",\n  "started": "%s",\n' "$MODE" "$STARTED"
    printf '  "wall_s": %.1f,\n  "budget_total_s": %d,\n  "python": "%s",\n' "$WALL" "$BUDGET_TOTAL" "$PY"
    printf '  "host": "%s",\n  "parts": {\n' "${HOSTNAME:-unknown}"
    sep=""
    while IFS=$'\t' read -r name status seconds rc; do
        [[ $status == ok ]] || FAILED=1
        file="$name.json"
        [[ $name == configs ]] && file=environment.json
        json=null
        [[ -s "$OUT_DIR/$file" ]] && json="\"$file\""
        printf '%s    "%s": {"status": "%s", "seconds": %.1f, "return_code": %d, "budget_s": %d, "json": %s}' \
            "$sep" "$name" "$status" "$seconds" "$rc" "${BUDGET[$name]}" "$json"
        sep=$',\n'
    done <"$PARTS"
    printf '\n  },\n  "all_ok": %s\n}\n' "$([[ $FAILED == 0 ]] && echo true || echo false)"
} >"$OUT_DIR/summary.json"
log "summary: $OUT_DIR/summary.json (wall $(printf '%.0f' "$WALL") s)"
cat "$OUT_DIR/summary.json"
exit "$FAILED"
