#!/usr/bin/env bash
# Run the GPU benchmarks and write a table beside the 2-core CPU's numbers.
#
#   bash benchmarks/gpu.sh [--dry-run] [--only STEP,...] [RESULTS_DIR]
#   bash benchmarks/gpu.sh --prepare      # copy wheels and data into .whl/ and .data/, then exit
#
# Steps, in this order: gated_experts (benchmarks/gated_experts.py), moe_mnist,
# dot_rnn_jsb (with its init_from source dt_rnn_jsb), maxout_mnist_pi, each
# recipe run with `python3 -m deepkit.cli run recipes/NAME.yaml --backend jax`.
# Results go to $OUT when it is set (the device tool's output folder), else to
# RESULTS_DIR: device.txt, steps.tsv, logs/, runs/NAME/ (run directories),
# gated_experts.md, table.md and table.json. The short table is printed last
# (and rewritten after every step, so a run cut short still leaves one).
#
# Where Keras is not importable (the GPU image: JAX and torch, no TF/Keras,
# no network), the wheels in .whl/ are installed into .site/ and put on
# PYTHONPATH; where it is (this machine's venv) that setup is skipped.
# DEEPKIT_DATA is .data/ (filled from /work/shared/data when that exists),
# else an already set DEEPKIT_DATA.
#
# Options and environment:
#   --dry-run  (GPU_DRY_RUN=1)  every step with tiny settings on whatever
#              device there is: --smoke recipes, the benchmark's smallest sizes
#   --only a,b (GPU_ONLY)       run only these steps
#   GPU_TIME_LIMIT=MINUTES      --time-limit of each recipe (each training stage,
#              also init_from's); default 1; "none" for the recipes' own budgets
#   GPU_STEP_TIMEOUT=SECONDS    kill a step after this long (default 240; raise it
#              with GPU_TIME_LIMIT=none or a larger limit)
#   PYTHON=...                  the interpreter (default: .venv/bin/python when
#              it imports Keras, else python3)
# Exit status: 0 when every step succeeded, 1 otherwise.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
ROOT=$PWD
SHARED_WHEELS=${DEEPKIT_WHEELS:-/work/shared/device/wheels}  # where --prepare finds the wheels
SHARED_DATA=${DEEPKIT_DATA_SOURCE:-/work/shared/data}  # where --prepare finds the data
LOCAL_WHEELS=/opt/pypi/files  # this machine's offline package files
DATA_FILES=(
  "mnist/train-images-idx3-ubyte.gz" "mnist/train-labels-idx1-ubyte.gz"
  "mnist/t10k-images-idx3-ubyte.gz" "mnist/t10k-labels-idx1-ubyte.gz"
  "polyphonic/JSB Chorales.pickle"
)
ALL_STEPS="gated_experts,moe_mnist,dot_rnn_jsb,maxout_mnist_pi"

DRY=${GPU_DRY_RUN:-0}
ONLY=${GPU_ONLY:-$ALL_STEPS}
PREPARE=0
DEST=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --prepare) PREPARE=1 ;;
    --only) shift; ONLY=${1:?--only needs a list of steps} ;;
    --only=*) ONLY=${1#--only=} ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    -*) echo "gpu.sh: unknown option $1" >&2; exit 2 ;;
    *) DEST=$1 ;;
  esac
  shift
done
case "$DRY" in 0|""|false|no) DRY=0 ;; *) DRY=1 ;; esac

log() { echo "[gpu.sh $(date +%H:%M:%S)] $*" >&2; }

# -- copy the wheels and the data into the checkout's ignored folders ---------
prepare() {
  if ! ls .whl/*.whl >/dev/null 2>&1 && [ -d "$SHARED_WHEELS" ]; then
    mkdir -p .whl && cp "$SHARED_WHEELS"/*.whl .whl/ && log "copied the wheels into .whl/"
  fi
  # Pure-Python packages Keras and optree import (packaging, typing_extensions),
  # in .whl/extra/: installed only where the image lacks them.
  local w f copied=0
  for w in packaging typing_extensions; do
    if ! ls .whl/extra/$w-*.whl >/dev/null 2>&1; then
      f=$(ls "$LOCAL_WHEELS"/$w-*-py3-none-any.whl 2>/dev/null | sort -V | tail -n 1)
      [ -n "$f" ] && mkdir -p .whl/extra && cp "$f" .whl/extra/
    fi
  done
  for f in "${DATA_FILES[@]}"; do
    if [ ! -s ".data/$f" ] && [ -s "$SHARED_DATA/$f" ]; then
      mkdir -p ".data/$(dirname "$f")" && cp "$SHARED_DATA/$f" ".data/$f" && copied=1
    fi
  done
  [ "$copied" = 1 ] && log "copied the data into .data/"
  return 0
}

if [ "$PREPARE" = 1 ]; then
  prepare
  ls -la .whl .data/* >&2
  exit 0
fi

# -- where the results go -----------------------------------------------------
if [ -n "${OUT:-}" ]; then
  [ -n "$DEST" ] && log "\$OUT is set: results go to $OUT, not $DEST"
  DEST=$OUT
fi
if [ -z "$DEST" ]; then
  echo "usage: bash benchmarks/gpu.sh [--dry-run] [--only STEPS] RESULTS_DIR (or set \$OUT)" >&2
  exit 2
fi
mkdir -p "$DEST" && DEST=$(cd "$DEST" && pwd) || exit 2
mkdir -p "$DEST/logs" "$DEST/runs"
rm -f "$DEST/steps.tsv" "$DEST/DRY_RUN" "$DEST/table.md" "$DEST/table.json" "$DEST/gated_experts.md"
[ "$DRY" = 1 ] && touch "$DEST/DRY_RUN"
START=$SECONDS

# -- Python, Keras --------------------------------------------------------------
export KERAS_BACKEND=jax
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  if [ -x .venv/bin/python ] && .venv/bin/python -c "import keras" >/dev/null 2>&1; then
    PYTHON=$ROOT/.venv/bin/python
  fi
fi
if "$PYTHON" -c "import keras" >/dev/null 2>&1; then
  log "Keras is importable with $PYTHON: no .site setup"
  export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
else
  log "Keras is not importable with $PYTHON: installing .whl/*.whl into .site/"
  prepare
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "gpu.sh: no wheels in .whl/ (copy /work/shared/device/wheels/*.whl there and carry .whl)" >&2
    exit 1
  fi
  export PYTHONPATH=$ROOT/.site:$ROOT${PYTHONPATH:+:$PYTHONPATH}
  if ! "$PYTHON" -c "import keras, optree, namex" >/dev/null 2>&1; then
    rm -rf .site
    if "$PYTHON" -m pip --version >/dev/null 2>&1; then
      "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target .site .whl/*.whl \
        || { echo "gpu.sh: pip could not install .whl/*.whl into .site" >&2; exit 1; }
    else  # no pip: a wheel is a zip file that unpacks into site-packages as it is
      log "no pip: unpacking the wheels into .site/"
      for w in .whl/*.whl; do "$PYTHON" -m zipfile -e "$w" .site || exit 1; done
    fi
  fi
  for m in packaging typing_extensions; do
    if ! "$PYTHON" -c "import $m" >/dev/null 2>&1 && ls .whl/extra/$m-*.whl >/dev/null 2>&1; then
      log "$m is missing: installing .whl/extra/$m-*.whl into .site/"
      "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target .site .whl/extra/$m-*.whl \
        2>/dev/null || "$PYTHON" -m zipfile -e .whl/extra/$m-*.whl .site
    fi
  done
  "$PYTHON" -c "import keras" || { echo "gpu.sh: Keras still not importable from .site" >&2; exit 1; }
fi

# -- data -------------------------------------------------------------------------
prepare
missing=0
for f in "${DATA_FILES[@]}"; do [ -s ".data/$f" ] || missing=1; done
if [ "$missing" = 0 ]; then
  export DEEPKIT_DATA=$ROOT/.data
elif [ -z "${DEEPKIT_DATA:-}" ]; then
  echo "gpu.sh: .data/ lacks some of: ${DATA_FILES[*]} (run bash benchmarks/gpu.sh --prepare and carry .data)" >&2
  exit 1
fi
log "DEEPKIT_DATA=$DEEPKIT_DATA"

# -- the device ---------------------------------------------------------------------
{
  if command -v nvidia-smi >/dev/null 2>&1 && gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null) && [ -n "$gpu" ]; then
    echo "card: $gpu"
  else
    echo "card: cpu"
  fi
  "$PYTHON" -c 'import jax; print("jax.devices():", jax.devices())' 2>/dev/null || echo "jax.devices(): ?"
  "$PYTHON" -c 'import sys, platform, os, jax, keras; print(f"python {platform.python_version()}, jax {jax.__version__}, keras {keras.__version__}, {os.cpu_count()} CPUs, {platform.machine()}")' 2>/dev/null
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ); mode: $([ "$DRY" = 1 ] && echo dry-run || echo full); time limit per stage: $([ "$DRY" = 1 ] && echo "none (smoke)" || echo "${GPU_TIME_LIMIT:-1} min")"
} >"$DEST/device.txt"
cat "$DEST/device.txt" >&2

# -- the steps ----------------------------------------------------------------------
TIMEOUT=()
command -v timeout >/dev/null 2>&1 && TIMEOUT=(timeout --kill-after=15 "${GPU_STEP_TIMEOUT:-240}")
FAILED=0

table() { "$PYTHON" benchmarks/gpu_table.py "$DEST" "$@"; }

step() {  # step NAME COMMAND...: run it, log it, record rc and seconds
  local name=$1; shift
  local t0=$SECONDS rc
  log "$name: $*"
  "${TIMEOUT[@]}" "$@" >"$DEST/logs/$name.log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >>"$DEST/steps.tsv"
  if [ "$rc" != 0 ]; then
    FAILED=1
    log "$name FAILED (rc $rc); the end of its log:"
    tail -n 15 "$DEST/logs/$name.log" >&2
  else
    log "$name done in $((SECONDS - t0)) s"
  fi
  table --quiet || log "the table could not be written"
}

run_recipe() {
  local name=$1 args=()
  rm -rf "$DEST/runs/$name"  # an existing run directory would be resumed
  if [ "$DRY" = 1 ]; then
    args=(--smoke)
  elif [ "${GPU_TIME_LIMIT:-1}" != none ]; then
    args=(--time-limit "${GPU_TIME_LIMIT:-1}")
  fi
  step "$name" "$PYTHON" -m deepkit.cli run "recipes/$name.yaml" --backend jax \
    --run-dir "$DEST/runs/$name" "${args[@]}"
}

run_gated_experts() {
  local args=(--backend jax --repeats 9 --dense-repeats 3)  # the CPU's command (RESULTS.md)
  [ "$DRY" = 1 ] && args=(--backend jax --tokens 256 --dim 32 --hidden 64 --experts 4,8
                          --repeats 2 --dense-repeats 1 --warmup 1)
  # Its table (stdout) goes to gated_experts.md, the rest to logs/.
  step gated_experts bash -c 'out=$1; shift; exec "$@" >"$out"' _ "$DEST/gated_experts.md" \
    "$PYTHON" benchmarks/gated_experts.py "${args[@]}"
}

IFS=, read -r -a STEPS <<<"$ONLY"
for s in "${STEPS[@]}"; do
  case "$s" in
    gated_experts) run_gated_experts ;;
    moe_mnist|dot_rnn_jsb|maxout_mnist_pi) run_recipe "$s" ;;
    *) log "unknown step $s (known: $ALL_STEPS)"; FAILED=1 ;;
  esac
done

log "all steps in $((SECONDS - START)) s; results in $DEST (table.md, logs/, runs/)"
echo
table || FAILED=1
exit "$FAILED"
