"""The spread of accuracy over clients (pfedla/fairness.py), by hand on fixed vectors."""

import math

import pytest

from pfedla.fairness import spread, spread_by_group
from pfedla.outputs import build_summary


def test_spread_of_four_clients_by_hand():
    s = spread([0.2, 0.4, 0.6, 0.8])
    # mean 0.5; deviations +-0.3, +-0.1 -> population variance (0.09 + 0.01 + 0.01 + 0.09) / 4 = 0.05
    assert s["mean"] == pytest.approx(0.5)
    assert s["std"] == pytest.approx(math.sqrt(0.05))
    assert s["worst"] == 0.2
    assert s["worst10pct_mean"] == 0.2  # ceil(0.1 * 4) = 1 client
    assert s["clients"] == 4


def test_worst_ten_percent_rounds_up_to_whole_clients():
    acc = [0.9, 0.5, 0.7, 0.6, 0.8, 0.95, 0.4, 0.85, 0.75, 0.65, 0.55]  # 11 clients: ceil(1.1) = 2 worst
    assert spread(acc)["worst10pct_mean"] == pytest.approx((0.4 + 0.5) / 2)
    assert spread(acc[:10])["worst10pct_mean"] == pytest.approx(0.4)  # 10 clients: exactly 1


def test_spread_by_group_splits_the_clients_by_their_group():
    by_group = spread_by_group([0.2, 0.4, 0.6, 0.8], [0, 1, 0, 1])
    assert set(by_group) == {"0", "1"}
    assert by_group["0"]["mean"] == pytest.approx(0.4) and by_group["0"]["std"] == pytest.approx(0.2)
    assert by_group["1"]["worst"] == 0.4 and by_group["1"]["clients"] == 2
    with pytest.raises(ValueError):
        spread_by_group([0.2, 0.4], [0])


def test_summary_carries_the_spread_of_final_and_best_and_per_group_when_given():
    history = [
        {"round": 1, "val/acc_mean": 0.7, "test/acc_mean": 0.5, "test/acc_weighted": 0.5, "client_acc": [0.2, 0.8]},
        {"round": 2, "val/acc_mean": 0.6, "test/acc_mean": 0.6, "test/acc_weighted": 0.6, "client_acc": [0.5, 0.7]},
    ]
    summary = build_summary(history, {}, 1.0, {}, rounds_done=2, groups=[3, 1])
    assert summary["best"]["round"] == 1 and summary["best"]["spread"]["worst"] == 0.2
    assert summary["final"]["spread"]["std"] == pytest.approx(0.1)
    assert summary["final"]["spread_by_group"]["3"]["mean"] == 0.5
    assert "spread_by_group" not in build_summary(history, {}, 1.0, {}, rounds_done=2)["final"]
