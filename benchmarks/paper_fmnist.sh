#!/usr/bin/env bash
# Real Fashion-MNIST comparison: every algorithm x seeds 0,1,2 on two splits (20 clients, all per
# round, the BatchNorm CNN for everyone), plus pFedLA with a hypernetwork learning rate at which
# alpha actually moves (see docs/RESULTS.md). Writes multirun/paper_fmnist/<split>/report.md.
#   bash benchmarks/paper_fmnist.sh                       # defaults below
#   ROUNDS=100 FRACTION=1.0 bash benchmarks/paper_fmnist.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-multirun/paper_fmnist}
ROUNDS=${ROUNDS:-40}
FRACTION=${FRACTION:-0.25}
COMMON=(dataset.fraction="$FRACTION" federation.rounds="$ROUNDS" logger=csv trainer.progress_bar=false
        trainer.accelerator=cpu checkpoint.every=100000 viz.every=100000)
for split in pathological2 dirichlet0.1; do
  case $split in
    pathological2) PART=(partition=pathological partition.classes_per_client=2) ;;
    dirichlet0.1) PART=(partition=dirichlet partition.alpha=0.1) ;;
  esac
  $PY -m pfedla.run -m +experiment=compare "${PART[@]}" "${COMMON[@]}" hydra.sweep.dir="$OUT/$split"
  $PY -m pfedla.run -m +experiment=compare "${PART[@]}" "${COMMON[@]}" algorithm=pfedla algorithm.hn_lr=5 \
    hydra.sweep.dir="$OUT/$split/pfedla_hn_lr5"
  $PY -m pfedla.report "$OUT/$split"
done
