#!/usr/bin/env bash
# The benchmark suites on a GPU machine, recorded under
# bench/results/<backend>-<device kind>/ (full shapes, each suite bounded by
# a time limit so a slow one cannot take the others' results with it;
# finished cases are saved as they complete).
#
#   bash bench/gpu.sh [run]         # on the GPU machine
#   bash bench/gpu.sh prepare       # on a machine with network: downloads the
#                                   # wheels of autontk's runtime dependencies
#                                   # into .whl/ for a GPU machine without
#                                   # network (`run` installs them)
#   bash bench/gpu.sh collect DIR   # copies DIR/results/<tag> (what `run`
#                                   # copied to $COPY_TO) into bench/results/
#
# autontk and plain JAX run with the machine's own jax (CUDA); torch.func
# with the machine's own torch on the GPU (AUTONTK_BENCH_TORCH_PYTHON /
# _DEVICE); neural-tangents is left out (it needs jax 0.4.23, whose CPU
# numbers on a GPU host would not be a comparison). SUITES overrides the
# "suite:seconds" list; COPY_TO names a folder that receives a copy of the
# results; EXTRA_ARGS is appended to every `python -m bench`
# (e.g. EXTRA_ARGS="--quick --cases fcn32" for a dry run on a CPU machine).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
# autontk's runtime dependencies that a CUDA image may lack, at the versions
# of autontk's own environment.
WHEELS="optuna==5.0.0 alembic==1.20.1 sqlalchemy==2.1.9 colorlog==6.12.0
Mako==1.4.3 sqlite-utils==4.2.1 sqlite-fts4==1.0.3 click-default-group==1.2.4
platformdirs==4.14.8 tabulate==0.10.0"
SUITES=${SUITES:-"reference:150 scaling:60 regret:150 memory:60 plancache:40
regret_unseen:120 stacked:40 kernels:60 precision:20 overhead:40"}

case "${1:-run}" in
  prepare)
    mkdir -p .whl
    for w in $WHEELS; do
      "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "$w" || echo "could not download $w" >&2
    done
    ls -la .whl
    ;;
  run)
    if ls .whl/*.whl >/dev/null 2>&1; then
      # Only what the image lacks; never replace its jax/numpy/torch.
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target /tmp/site .whl/*.whl || exit 1
      export PYTHONPATH="$ROOT:/tmp/site"
      export AUTONTK_BENCH_PYTHONPATH=/tmp/site
    else
      export PYTHONPATH="$ROOT"
    fi
    export PYTHONUNBUFFERED=1
    export AUTONTK_BENCH_TORCH_PYTHON=${AUTONTK_BENCH_TORCH_PYTHON:-$(command -v "$PY")}
    export AUTONTK_BENCH_TORCH_DEVICE=${AUTONTK_BENCH_TORCH_DEVICE:-cuda}
    "$PY" -c "import jax; print('jax', jax.__version__, jax.devices())" || exit 1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
    TAG=${TAG:-$("$PY" -c "from bench import record; print(record.machine_tag(record.machine_info()))")}
    for spec in $SUITES; do
      suite=${spec%%:*}; limit=${spec##*:}
      echo "=== $suite (limit ${limit}s) ==="
      timeout --signal=INT "$limit" "$PY" -m bench --only "$suite" --tag "$TAG" \
        --peers torch,jax --budget-mib 16384 ${EXTRA_ARGS:-} \
        || echo "suite $suite stopped: $?"
    done
    "$PY" -m bench --report-only --tag "$TAG" || true
    if [ -n "${COPY_TO:-}" ]; then
      mkdir -p "$COPY_TO/results"
      cp -r "bench/results/$TAG" "$COPY_TO/results/"
    fi
    ;;
  collect)
    SRC=${2:?usage: bash bench/gpu.sh collect DIR}
    for d in "$SRC"/results/*/; do
      tag=$(basename "$d")
      rm -rf "bench/results/$tag"
      cp -r "$d" "bench/results/$tag"
      chmod -R u+w "bench/results/$tag"
      PYTHONPATH="$ROOT" "$PY" -m bench --report-only --tag "$tag"
    done
    ;;
  *)
    echo "usage: bash bench/gpu.sh [run] | prepare | collect DIR" >&2; exit 2 ;;
esac
