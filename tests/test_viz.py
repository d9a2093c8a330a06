"""Heatmaps show exactly alpha (row i receives from column j); an offline W&B run holds them."""

import json

import matplotlib.axes
import numpy as np
import pytest
import torch

from pfedla.viz.callbacks import Figures
from pfedla.viz.heatmaps import alpha_long_format
from tests.helpers import make_pfedla


def _hand_set_alpha(algo, n):
    """Zero head weights and positive biases: alpha_i^l = bias_i^l / sum(bias_i^l), non-symmetric."""
    layers = len(algo.layer_names)
    target = torch.rand(n, layers, n, generator=torch.Generator().manual_seed(0)) + 0.05
    target[0, :, 2] = 3.0  # client 0 leans on client 2, not the reverse
    with torch.no_grad():
        algo.hypernetworks.head_weight.zero_()
        algo.hypernetworks.head_bias.copy_(target.view(n, -1))
    return (target / target.sum(-1, keepdim=True)).numpy()


def test_heatmaps_show_alpha_with_receiving_client_on_rows(tmp_path, monkeypatch):
    n = 4
    algo = make_pfedla(num_clients=n)
    expected = _hand_set_alpha(algo, n)
    shown = []
    real_imshow = matplotlib.axes.Axes.imshow
    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", lambda ax, m, **kw: (shown.append(np.array(m)),
                                                                            real_imshow(ax, m, **kw))[1])
    Figures(tmp_path, every=1).heatmaps(algo, round_idx=7)

    layers = algo.layer_names
    assert sorted(p.name for p in (tmp_path / "heatmaps").iterdir()) == sorted(
        [f"round_0007_{layer}.png" for layer in layers] + ["round_0007_all.png"]
    )
    per_layer, side_by_side = shown[: len(layers)], shown[len(layers):]
    for l in range(len(layers)):
        np.testing.assert_allclose(per_layer[l], expected[:, l, :], rtol=1e-6)
        np.testing.assert_allclose(side_by_side[l], expected[:, l, :], rtol=1e-6)
    assert per_layer[0][0, 2] > 0.5 and per_layer[0][2, 0] < 0.5  # orientation: row 0 receives from column 2
    rows = alpha_long_format(expected, layers, 7)
    assert rows[2] == [7, layers[0], 0, 2, pytest.approx(float(expected[0, 0, 2]))]

    # feature-skew groups: clients ordered by group, the same matrix permuted (client 0 of group 1 goes last)
    shown.clear()
    labels = []
    real_labels = matplotlib.axes.Axes.set_yticklabels
    monkeypatch.setattr(matplotlib.axes.Axes, "set_yticklabels",
                        lambda ax, names, **kw: (labels.append(list(names)), real_labels(ax, names, **kw))[1])
    Figures(tmp_path, every=1).heatmaps(algo, round_idx=8, groups=[1, 0, 0, 1], ids=[10, 11, 12, 13])
    order = [1, 2, 0, 3]
    np.testing.assert_allclose(shown[0], expected[:, 0, :][np.ix_(order, order)], rtol=1e-6)
    assert labels[0] == ["11:0", "12:0", "10:1", "13:1"]  # partition id : group, in group order


def test_offline_wandb_run_holds_heatmaps_alpha_table_and_metrics(synthetic_cfg, tmp_path, monkeypatch):
    from pfedla.run import run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run(synthetic_cfg("logger=wandb", "federation.rounds=2", "viz.every=1"), tmp_path / "run")
    (offline,) = (tmp_path / "wb" / "wandb").glob("offline-run-*")
    media = offline / "files" / "media"
    images = sorted(p.name for p in (media / "images" / "alpha").glob("*.png"))
    for layer in ("conv1", "conv2", "fc1", "fc2", "fc3", "all"):
        assert sum(name.startswith(f"{layer}_") for name in images) == 2, (layer, images)  # rounds 1 and 2
    tables = list((media / "table" / "alpha").glob("table_*.table.json"))
    assert len(tables) == 2
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["round", "layer", "i", "j", "alpha"] and len(table["data"]) == 5 * 4 * 4
    assert (media / "images" / "figures").is_dir()
    assert (tmp_path / "run" / "heatmaps" / "round_0002_all.png").is_file()
    assert (tmp_path / "run" / "accuracy.png").is_file() and (tmp_path / "run" / "client_accuracy.png").is_file()
    assert any(offline.glob("*.wandb"))  # the metrics stream


@pytest.mark.slow
def test_unreachable_wandb_server_falls_back_to_offline_quickly(synthetic_cfg, tmp_path, monkeypatch):
    import time

    from pfedla.run import run

    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    started = time.time()
    summary = run(synthetic_cfg("logger=wandb", "logger.mode=online", "logger.init_timeout=5",
                                "federation.rounds=1"), tmp_path / "run")
    assert time.time() - started < 90, "an unreachable server must not hold the run for minutes"
    assert summary["rounds"] == 1
    assert list((tmp_path / "wb" / "wandb").glob("offline-run-*")), "metrics must still be logged (offline)"
