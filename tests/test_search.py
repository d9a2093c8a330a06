"""Hyperparameter search on validation through Hydra's Optuna sweeper (hparams_search=<algorithm>)."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from pfedla.search import objective_value
from tests.conftest import REPO

TINY = ["dataset=synthetic", "dataset.fraction=1.0", "federation.num_clients=4", "federation.rounds=2"]


def _search(tmp_path, *args):
    cmd = [sys.executable, "-m", "pfedla.run", "-m", *args, *TINY, f"hydra.sweep.dir={tmp_path}"]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_objective_is_the_mean_validation_accuracy_of_the_last_three_evaluations():
    history = [{"round": r, "val/acc_mean": v, "test/acc_mean": 1.0} for r, v in enumerate([0.1, 0.2, 0.4, 0.6], 1)]
    assert objective_value(history) == pytest.approx((0.2 + 0.4 + 0.6) / 3)
    assert objective_value([]) is None
    # objective=adapted: score (b)'s validation accuracy, over the evaluations that adapted (FedBABU's number)
    history[1]["val/adapted_acc_mean"], history[3]["val/adapted_acc_mean"] = 0.5, 0.9
    assert objective_value(history, "adapted") == pytest.approx((0.5 + 0.9) / 2)


def test_an_adapted_objective_without_adaptation_is_refused_before_training(synthetic_cfg):
    from pfedla.errors import ConfigError
    from pfedla.validate import validate_config

    with pytest.raises(ConfigError, match="federation.adapt_every"):
        validate_config(synthetic_cfg("objective=adapted", "federation.adapt_every=0"))
    with pytest.raises(ConfigError, match="objective"):
        validate_config(synthetic_cfg("objective=test"))
    validate_config(synthetic_cfg("objective=adapted", "federation.adapt_every=5"))


@pytest.mark.slow
def test_a_two_trial_pfedla_search_writes_the_best_parameters_chosen_on_validation(tmp_path):
    proc = _search(tmp_path, "hparams_search=pfedla", "hydra.sweeper.n_trials=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    trials = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*/summary.json"))]
    assert len(trials) == 2
    assert best["best_value"] == pytest.approx(max(t["objective"] for t in trials))
    winner = max(trials, key=lambda t: t["objective"])["config"]
    assert best["best_params"]["algorithm.hn_lr"] == pytest.approx(winner["algorithm"]["hn_lr"])
    assert best["best_params"]["algorithm.hn_optimizer"] == winner["algorithm"]["hn_optimizer"]
    assert set(best["best_params"]) == {"client.lr", "algorithm.head_init", "algorithm.normalisation",
                                        "algorithm.hn_optimizer", "algorithm.hn_lr", "algorithm.grouping"}


@pytest.mark.slow
def test_a_failing_trial_is_recorded_and_the_search_goes_on(tmp_path):
    # client.lr=0 fails validation: those trials write error.txt, the others still run, one of them wins.
    # (The sampler is seeded, so which trials draw 0 is fixed.)
    proc = _search(tmp_path, "hparams_search=pfedhn", "hydra.sweeper.n_trials=4",
                   'hydra.sweeper.params={client.lr:"choice(0, 0.05)"}')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list(tmp_path.glob("*/error.txt"))) >= 1 and len(list(tmp_path.glob("*/summary.json"))) >= 1
    assert yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())["best_params"]["client.lr"] == 0.05


@pytest.mark.slow
def test_the_documented_search_command_writes_under_multirun_search_study_name(tmp_path):
    # As typed by a user (no hydra.sweep.dir override): the sweep dir is resolved when the sweeper
    # starts, before Hydra's runtime config exists, so it may only use plain config values.
    cmd = [sys.executable, "-m", "pfedla.run", "-m", "hparams_search=fedavg", *TINY,
           'hydra.sweeper.params={client.lr:"choice(0.05)"}', "hydra.sweeper.n_trials=1"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((tmp_path / "multirun" / "search" / "fedavg").glob("*/0/summary.json"))) == 1
