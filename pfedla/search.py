"""Hyperparameter search on validation accuracy (Hydra's Optuna sweeper, ``hparams_search=<algorithm>``).

The objective of a run is ``objective_value``: its validation accuracy of score (a), or (b) with
``objective=adapted`` (FedBABU, whose number is (b)), averaged over its last ``OBJECTIVE_LAST`` evaluations
that have it (one round's noise smoothed; the test split is never read). A failed run
returns nothing, which the sweeper records as a failed trial while the search goes on.

Search spaces live in ``conf/hparams_search/<algorithm>.yaml``; the conditional part that a flat
``params`` list cannot say (pFedLA's learning-rate range depends on its optimizer) is here, named by
the yaml's ``hydra.sweeper.custom_search_space``.
"""

from __future__ import annotations

OBJECTIVE_LAST = 3
# hn_lr ranges per optimizer: Adam's step size does not depend on the gradient's scale, SGD's does
# (pFedLA's hypernetwork gradients are ~1e-2/N, so SGD needs rates around 1; conf/algorithm/pfedla.yaml).
PFEDLA_HN_LR = {"adam": (1e-4, 1e-1), "sgd": (1e-1, 2e1)}


OBJECTIVES = {"personalized": "val/acc_mean", "adapted": "val/adapted_acc_mean"}  # ``objective``: the column


def objective_value(history: list[dict], objective: str = "personalized", last: int = OBJECTIVE_LAST) -> float | None:
    """Mean validation accuracy of score (a) (``personalized``) or (b) (``adapted``) over the last ``last``
    evaluations that have it (None before any)."""
    key = OBJECTIVES[objective]
    values = [r[key] for r in history if r.get(key) is not None][-last:]
    return sum(values) / len(values) if values else None


def pfedla_space(cfg, trial) -> None:
    """pFedLA/HeurpFedLA: the hypernetwork optimizer, then a learning rate in that optimizer's range."""
    optimizer = trial.suggest_categorical("algorithm.hn_optimizer", sorted(PFEDLA_HN_LR))
    trial.suggest_float("algorithm.hn_lr", *PFEDLA_HN_LR[optimizer], log=True)
