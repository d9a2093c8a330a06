#!/usr/bin/env bash
# The GPU check, ready for the moment a GPU is lent (docs/PERFORMANCE.md, "On a GPU").
#
#   benchmarks/gpu.sh [--precision] [--out FILE]    # on the GPU machine: must fit 8 minutes
#   benchmarks/gpu.sh --smoke --out /tmp/gpu.json   # anywhere, on the CPU, in seconds (CI)
#
# On a bare machine whose Python has torch, Lightning and torchmetrics but not Hydra, carry the missing
# packages as wheels in .whl/ (make gpu-wheels); they are installed into /tmp/site, only where missing.
# Fashion-MNIST is read from $PFEDLA_DATA_ROOT (default: ./data), so carry data/ too.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
if ! "$PY" -c "import hydra, omegaconf" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}   # this checkout's pfedla, installed or not
export PFEDLA_DATA_ROOT=${PFEDLA_DATA_ROOT:-$PWD/data} WANDB_MODE=disabled PYTHONUNBUFFERED=1
out=${OUT:+$OUT/gpu.json}
exec "$PY" benchmarks/gpu.py ${out:+--out "$out"} "$@"
