"""End to end through Hydra's compose API (seconds), the real CLI, and a -m sweep."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from pfedla.errors import ConfigError
from pfedla.run import run, setup
from tests.conftest import REPO, SYNTHETIC, compose_config


def test_synthetic_run_writes_contracted_files_and_learns(synthetic_cfg, tmp_path):
    cfg = synthetic_cfg("federation.rounds=3", "client.epochs=2", "client.batch_size=16")
    summary = run(cfg, tmp_path)
    contracted = ("metrics.csv", "summary.json", "partition.json", "partition.png", "alpha.npz")
    contracted += ("checkpoints/last.ckpt",)
    for name in contracted:
        assert (tmp_path / name).is_file(), name
    rows = list(csv.DictReader((tmp_path / "metrics.csv").read_text().splitlines()))
    assert [int(float(r["round"])) for r in rows] == [1, 2, 3]
    assert [r["test/adapted_acc_mean"] != "" for r in rows] == [False, False, True]  # adapt_every=5: last round
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["final"]["test/acc_mean"] == pytest.approx(float(rows[-1]["test/acc_mean"]))
    assert on_disk["final"]["test/acc_mean"] == pytest.approx(np.mean(on_disk["final"]["client_acc"]))
    best_val = max(rows, key=lambda r: float(r["val/acc_mean"]))
    assert on_disk["best"]["round"] == int(best_val["round"])
    assert on_disk["best"]["test/acc_mean"] == pytest.approx(float(best_val["test/acc_mean"]))
    assert on_disk["final_adapted"]["round"] == 3 and "test/adapted_acc_mean" in on_disk["headline"]
    assert on_disk["config"]["federation"]["num_clients"] == 4
    assert on_disk["bytes_down"] > 0 and on_disk["wall_seconds"] > 0
    assert summary["final"]["test/acc_mean"] > 0.5, "10 balanced classes: chance is 0.1"
    alpha = np.load(tmp_path / "alpha.npz")
    assert alpha["alpha"].shape == (4, 5, 4) and list(alpha["layers"]) == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    np.testing.assert_allclose(alpha["alpha"].sum(-1), 1.0, rtol=1e-5)
    partition = json.loads((tmp_path / "partition.json").read_text())
    assert sum(partition["train_sizes"]) + sum(partition["val_sizes"]) + sum(partition["test_sizes"]) == 1000


def test_client_trains_starting_exactly_from_the_aggregated_model(synthetic_cfg, tmp_path):
    cfg = synthetic_cfg("federation.rounds=2", "algorithm.head_init=random", "federation.adapt_every=0")
    module = setup(cfg)
    algo, real_trainer, starts = module.algorithm, module.engine.train_one, []

    def spy(model, params, buffers, x, y, **kw):
        i = next(c for c in range(4) if torch.equal(x, module.data.train_x[c]))
        with torch.no_grad():  # independent: explicit per-client, per-layer sum with the current (start-of-round) state
            alpha = algo.hypernetworks.alpha(torch.tensor([i]))[0]
            expected = {
                name: sum(alpha[l, j] * algo.client_params[name][j] for j in range(4))
                for l, names in enumerate(algo.layers.values()) for name in names
            }
            own = {n: algo.client_params[n][i].clone() for n in params}
        starts.append((i, {n: p.clone() for n, p in params.items()}, expected, own))
        out = real_trainer(model, params, buffers, x, y, **kw)
        return out

    module.engine.train_one = spy
    run(cfg, tmp_path, module=module)
    assert [i for i, *_ in starts] == [0, 1, 2, 3, 0, 1, 2, 3]
    for _, got, expected, _ in starts:
        torch.testing.assert_close(got, expected)
    # Round 2: the aggregate differs from the client's own model, so starting from "own" would fail above.
    assert all(any(not torch.allclose(got[n], own[n]) for n in got) for _, got, _, own in starts[4:])


def test_same_config_and_seed_give_identical_metrics(synthetic_cfg, tmp_path):
    a = run(synthetic_cfg("seed=1"), tmp_path / "a")
    b = run(synthetic_cfg("seed=1"), tmp_path / "b")
    c = run(synthetic_cfg("seed=2"), tmp_path / "c")
    assert a["final"] == b["final"] and a["partition_fingerprint"] == b["partition_fingerprint"]
    assert a["partition_fingerprint"] != c["partition_fingerprint"]
    assert (tmp_path / "a" / "metrics.csv").read_text() == (tmp_path / "b" / "metrics.csv").read_text()


def test_default_pfedla_alpha_learns_which_peers_share_labels_within_three_rounds(tmp_path):
    # Six clients holding five of ten classes each: 12 pairs with similar labels, 18 dissimilar. The shipped
    # pFedLA defaults (algorithm and tuned client settings; nothing overridden here) must move alpha.
    cfg = compose_config(["dataset=synthetic", "logger=none", "trainer.accelerator=cpu", "trainer.progress_bar=false",
                          "federation.num_clients=6", "federation.rounds=3", "federation.adapt_every=0",
                          "partition=pathological", "partition.classes_per_client=5"])
    stats = run(cfg, tmp_path)["alpha_stats"]
    assert stats["similar_pairs"] > 0 and stats["dissimilar_pairs"] > 0
    assert stats["max_abs_from_uniform"] > 0.05  # the old default (SGD 5e-3) moved it by ~1e-4
    fc3 = stats["layers"]["fc3"]
    assert fc3["similar_peer"] > fc3["dissimilar_peer"] and fc3["corr_with_similarity"] > 0


def test_heurpfedla_runs_and_reports_saved_communication(synthetic_cfg, tmp_path):
    summary = run(synthetic_cfg("algorithm=heurpfedla", "algorithm.k=2"), tmp_path)
    pfedla = run(synthetic_cfg(), tmp_path / "p")
    assert summary["bytes_saved"] > 0 and pfedla["bytes_saved"] == 0
    assert summary["bytes_down"] + summary["bytes_saved"] / 2 == pfedla["bytes_down"]
    assert np.load(tmp_path / "alpha.npz")["retained"].sum(1).tolist() == [2, 2, 2, 2]


def test_a_typo_in_a_key_fails_at_composition_naming_the_key():
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(SYNTHETIC + ["federation.num_client=5"])
    assert "num_client" in str(err.value) + str(err.value.__cause__)
    with pytest.raises((ConfigCompositionException, ValidationError, ConfigKeyError)):
        compose_config(SYNTHETIC + ["seed=abc"])


@pytest.mark.parametrize(
    "override, key",
    [
        ("partition.alpha=-1", "partition.alpha"),
        ("federation.participation=1.5", "federation.participation"),
        ("client.lr=0", "client.lr"),
        ("algorithm.hn_lr=-0.1", "algorithm.hn_lr"),
        ("partition=pathological partition.classes_per_client=11", "partition.classes_per_client"),
        ("algorithm=heurpfedla algorithm.k=5", "algorithm.k"),
        ("dataset.fraction=0", "dataset.fraction"),
        # an option given to a choice that does not take it (pfedla/targets.py)
        ("partition=iid partition.alpha=0.3", "partition.alpha=0.3 is not an option of partition=iid"),
        ("dataset.split=letters", "dataset.split='letters' is not an option of dataset=synthetic"),
        # feature / quantity skew (pfedla/datasets/feature_skew.py)
        ("partition.feature=colour", "partition.feature=colour needs colour images"),
        ("partition.feature=rotation partition.groups=5", "partition.groups"),
        ("partition.feature=rotation partition.groups=2 partition.group_of=[0,1]", "partition.group_of"),
        ("partition.feature=warp", "partition.feature"),
        ("partition.quantity=pareto", "partition.quantity"),
        # clients held out of training (pfedla/unseen.py)
        ("federation.unseen_fraction=1.0", "federation.unseen_fraction"),
        ("federation.num_clients=2 federation.unseen_fraction=0.9", "federation.unseen_fraction"),
        ("federation.unseen_fraction=0.3 federation.unseen_rounds=0", "federation.unseen_rounds"),
    ],
)
def test_bad_values_fail_before_training_naming_the_key(synthetic_cfg, tmp_path, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        run(synthetic_cfg(*override.split()), tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_missing_dataset_offline_names_path_and_both_fixes(synthetic_cfg, tmp_path):
    from pfedla.errors import DatasetMissingError

    cfg = synthetic_cfg("dataset=mnist", f"dataset.root={tmp_path}", "dataset.download=false")
    with pytest.raises(DatasetMissingError) as err:
        run(cfg, tmp_path / "run")
    assert str(tmp_path / "MNIST") in str(err.value) and "download" in str(err.value)


def _cli(*args, cwd=REPO):
    cmd = [sys.executable, "-m", "pfedla.run", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_cli_runs_an_experiment(tmp_path):
    proc = _cli("+experiment=smoke", "trainer.progress_bar=false", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "summary.json").read_text())["rounds"] == 3


def test_console_is_quiet_and_plain_when_not_a_terminal(tmp_path):
    import os

    env = {**os.environ, "WANDB_MODE": "offline"}  # W&B on, as in a user's default run
    cmd = [sys.executable, "-m", "pfedla.run", "+experiment=smoke", "logger=wandb", f"hydra.run.dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    for noise in ("anonymous", "litlogger", "GPU available", "treespec", "wandb:", "Trainer.fit"):
        assert noise not in out, noise
    assert "\r" not in out  # no progress-bar redraws in a log
    assert [line.split(" - ", 1)[1].split("  ")[0] for line in out.splitlines() if "/3  " in line] == [
        "round 1/3", "round 2/3", "round 3/3"]
    assert "wandb sync" in out and "round 3: (a) test/acc_mean" in out  # our own lines stay
    assert list(tmp_path.glob("wandb/offline-run-*"))


def test_cli_bad_value_exits_nonzero_with_one_clear_line(tmp_path):
    proc = _cli("+experiment=smoke", "client.batch_size=0", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2
    assert "client.batch_size must be >= 1 (got 0); try client.batch_size=32" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_multirun_sweep(tmp_path):
    proc = _cli("-m", "+experiment=smoke", "algorithm=pfedla,heurpfedla", "trainer.progress_bar=false",
                f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    jobs = sorted(p.parent.name for p in tmp_path.glob("*/summary.json"))
    assert jobs == ["0_pfedla", "1_heurpfedla"]


def test_resume_continues_to_the_same_result_as_an_uninterrupted_run(synthetic_cfg, tmp_path):
    # adapt_every=2: the cut run's last round (which always gets score (b)) has it in the straight run too
    common = ("algorithm.hn_momentum=0.5", "federation.adapt_every=2")
    straight = run(synthetic_cfg("federation.rounds=4", *common), tmp_path / "straight")
    run(synthetic_cfg("federation.rounds=2", *common), tmp_path / "cut")
    resume = f"resume={tmp_path / 'cut'}"
    resumed = run(synthetic_cfg("federation.rounds=4", *common, resume), tmp_path / "cut")
    assert resumed["final_adapted"] == straight["final_adapted"] and resumed["final_adapted"]["round"] == 4
    assert resumed["final"] == straight["final"] and resumed["best"] == straight["best"]
    assert (tmp_path / "cut/metrics.csv").read_text() == (tmp_path / "straight/metrics.csv").read_text()
    a = torch.load(tmp_path / "cut/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "straight/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # ... on today's default fast path (the K-process default is covered by tests/test_distributed.py)
    assert resumed["compute"]["memory_format"] == straight["compute"]["memory_format"] == "channels_last"


def test_summary_selects_the_best_round_by_validation_never_by_test():
    from pfedla.outputs import build_summary

    def record(r, val, test, adapted=None):
        out = {"round": r, "val/acc_mean": val, "test/acc_mean": test, "test/acc_weighted": test,
               "client_acc": [test]}
        if adapted is not None:
            out.update({"val/adapted_acc_mean": adapted[0], "test/adapted_acc_mean": adapted[1],
                        "test/adapted_acc_weighted": adapted[1], "adapted_client_acc": [adapted[1]]})
        return out

    # Round 2 is best on test, round 3 on validation; for (b), round 2 on test, round 4 on validation.
    history = [record(1, 0.50, 0.50), record(2, 0.60, 0.90, (0.70, 0.95)), record(3, 0.80, 0.70),
               record(4, 0.70, 0.75, (0.75, 0.80)), record(5, 0.80, 0.60)]
    summary = build_summary(history, {}, 1.0, {}, rounds_done=6)
    assert summary["best"]["round"] == 3 and summary["best"]["test/acc_mean"] == 0.70  # first of the val ties
    assert summary["best_adapted"]["round"] == 4 and summary["best_adapted"]["test/adapted_acc_mean"] == 0.80
    assert summary["final"]["round"] == 5 and summary["final_adapted"]["round"] == 4 and summary["rounds"] == 6
    empty = build_summary([], {}, 1.0, {}, rounds_done=8)  # stopped before the first evaluation
    assert empty["final"] is None and empty["best_adapted"] is None and empty["rounds"] == 8


def test_a_run_stopped_before_its_first_evaluation_exits_cleanly_and_counts_its_rounds(
        synthetic_cfg, tmp_path, monkeypatch):
    from pfedla.checkpointing import RoundCheckpoint

    original = RoundCheckpoint.on_train_epoch_end

    def signal_in_round_3(self, trainer, module):  # as if SIGTERM arrived during round 3
        if module.round == 3:
            self.requested = 15
        original(self, trainer, module)

    monkeypatch.setattr(RoundCheckpoint, "on_train_epoch_end", signal_in_round_3)
    summary = run(synthetic_cfg("federation.rounds=20", "federation.eval_every=10", "federation.adapt_every=10"),
                  tmp_path)
    assert summary["stopped_by_signal"] == 15 and summary["rounds"] == 3 and summary["final"] is None
    assert json.loads((tmp_path / "summary.json").read_text())["rounds"] == 3
    assert torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=True)["pfedla_rounds_done"] == 3


def test_resume_from_a_missing_checkpoint_is_a_clear_error(synthetic_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"resume=.*no checkpoint"):
        run(synthetic_cfg(f"resume={tmp_path / 'nothing'}"), tmp_path / "run")
