#!/usr/bin/env bash
# The full benchmark on a GPU machine, in one go (< 10 minutes), results
# committed. Three steps, because the lent GPU machine has no network:
#
#   bash bench/gpu.sh prepare     # here: download the wheels autontk needs
#                                 #   that the GPU image lacks, into .whl/
#   bash bench/gpu.sh run         # there (device tool, carry [".whl"]):
#                                 #   installs .whl into /tmp/site, runs
#                                 #   `python -m bench` (full) and copies the
#                                 #   results to $OUT/results/<tag>
#   bash bench/gpu.sh collect DIR # here: DIR = the fetched $OUT folder;
#                                 #   copies results/<tag> into
#                                 #   bench/results/ and commits them
#
# On an ordinary GPU machine with network, `bash bench/gpu.sh run` alone
# works too (wheels then come from pip if .whl/ is absent).
#
# What runs there: autontk and plain JAX on the GPU with the machine's own
# jax (CUDA), torch.func on the GPU with the machine's own torch
# (AUTONTK_BENCH_TORCH_PYTHON / _DEVICE), no neural-tangents (it needs
# jax 0.4.23, whose CUDA wheels are not on PyPI; its CPU numbers on a GPU
# host would not be a comparison). Each suite is bounded by `timeout`, so a
# slow one cannot take the others' results with it (finished cases are
# saved as they complete). EXTRA_ARGS is appended to every `python -m bench`
# (e.g. EXTRA_ARGS="--quick --cases fcn32" for a dry run on a CPU machine).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
# Packages of autontk's runtime that the CUDA image does not ship (see
# the device notes); SQLAlchemy is the only one with compiled code (cp312).
# Same versions as autontk's environment here.
WHEELS="optuna==5.0.0 alembic==1.20.1 sqlalchemy==2.1.9 colorlog==6.12.0
Mako==1.4.3 sqlite-utils==4.2.1 sqlite-fts4==1.0.3 click-default-group==1.2.4
platformdirs==4.14.8 tabulate==0.10.0"

case "${1:-run}" in
  prepare)
    mkdir -p .whl
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
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
    TAG=${TAG:-$("$PY" -c "
import jax; d = jax.devices()[0]
print('gpu-' + ''.join(c if c.isalnum() else '-' for c in d.device_kind.lower()))")}
    # Budgets (seconds) add up to < 10 minutes; full shapes, GPU-sized.
    for spec in "reference:170" "scaling:90" "regret:170" "memory:80" "plancache:50"; do
      suite=${spec%%:*}; limit=${spec##*:}
      echo "=== $suite (limit ${limit}s) ==="
      timeout --signal=INT "$limit" "$PY" -m bench --only "$suite" --tag "$TAG" \
        --peers torch,jax --budget-mib 16384 ${EXTRA_ARGS:-} \
        || echo "suite $suite stopped: $?"
    done
    "$PY" -m bench --report-only --tag "$TAG" || true
    if [ -n "${OUT:-}" ]; then
      mkdir -p "$OUT/results"
      cp -r "bench/results/$TAG" "$OUT/results/"
      cp bench/README.md "$OUT/README.md"
    fi
    ;;
  collect)
    SRC=${2:?usage: bash bench/gpu.sh collect FETCHED_OUT_DIR}
    for d in "$SRC"/results/*/; do
      tag=$(basename "$d")
      rm -rf "bench/results/$tag"
      cp -r "$d" "bench/results/$tag"
      chmod -R u+w "bench/results/$tag"
      git add "bench/results/$tag"
    done
    # Re-render here so bench/README.md gets the GPU block beside the CPU one.
    for d in "$SRC"/results/*/; do
      "$ROOT/.venv/bin/python" -m bench --report-only --tag "$(basename "$d")"
    done
    git add bench/README.md
    git commit -m "bench: GPU results ($(ls "$SRC"/results | tr '\n' ' '))"
    ;;
  *)
    echo "usage: bash bench/gpu.sh prepare | run | collect DIR" >&2; exit 2 ;;
esac
