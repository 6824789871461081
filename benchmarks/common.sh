# Shared by the bounded device scripts (gpu_check.sh, gpu_scaling.sh); sourced from the repository root.

# PY: $PYTHON if set, else .venv/bin/python if there, else python3; the repository root on PYTHONPATH.
pick_python() {
    if [[ -n ${PYTHON:-} ]]; then
        PY=$PYTHON
    elif [[ -x .venv/bin/python ]]; then
        PY=.venv/bin/python
    else
        PY=python3
    fi
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
}

# fresh_out_dir NAME DEFAULT: OUT_DIR, the absolute path of $OUT (else DEFAULT), which must be empty or
# new: a bounded run does not resume an old one.
fresh_out_dir() {
    OUT_DIR="${OUT:-$2}"
    mkdir -p "$OUT_DIR"
    OUT_DIR="$(cd "$OUT_DIR" && pwd)"
    if [[ -n $(ls -A "$OUT_DIR") ]]; then
        echo "$1: $OUT_DIR is not empty; give an empty or new folder (OUT=...): a run does not resume" >&2
        exit 2
    fi
}
