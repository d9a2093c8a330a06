"""pFedLA with alpha fixed instead of learned (``algorithm.alpha``), each proven against an independent
computation, and the relu normalisation's absorbing state."""

import csv

import pytest
import torch

from pfedla.algorithms.base import RoundContext
from pfedla.algorithms.fixed_alpha import label_similarity
from pfedla.algorithms.stacked import ClientModel
from pfedla.errors import ConfigError
from pfedla.run import run, setup
from pfedla.validate import validate_config
from tests.helpers import make_pfedla

COMMON = ("model=cnn_bn", "federation.adapt_every=1", "partition.alpha=0.5")


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_alpha_self_is_local_bit_for_bit(synthetic_cfg, tmp_path):
    modules = {}
    for name in ("pfedla_self", "local"):
        modules[name] = setup(synthetic_cfg(f"algorithm={name}", *COMMON))
        run(modules[name].cfg, tmp_path / name, module=modules[name])
    mine, local = modules["pfedla_self"].algorithm, modules["local"].algorithm
    for name in local.param_names:
        assert torch.equal(mine.client_params[name], local.client_params[name]), name
    for name in local.buffer_names:
        assert torch.equal(mine.client_buffers[name], local.client_buffers[name]), name
    ours, theirs = _rows(tmp_path / "pfedla_self/metrics.csv"), _rows(tmp_path / "local/metrics.csv")
    # Local has one score: (a) is already local training. pFedLA's (a) must equal it on every round.
    for key in ("val/acc_mean", "test/acc_mean", "train/loss"):
        assert [r[key] for r in ours] == [r[key] for r in theirs], key
    assert all(float(r["alpha/collapsed_fc3"]) == 1.0 for r in ours)


def test_alpha_uniform_sends_every_client_the_plain_mean_of_the_clients_models():
    algo = make_pfedla(num_clients=4, alpha="uniform")
    algo.begin_round(RoundContext(1, [0, 2, 3]))
    for i in (0, 2, 3):
        sent = algo.model_for(i)
        for name in algo.param_names:
            mean = sum(algo.client_params[name][j] for j in range(4)) / 4  # an explicit loop over clients
            torch.testing.assert_close(sent.params[name], mean, rtol=1e-6, atol=1e-7)
    assert algo.hypernetworks is None
    assert algo.round_metrics()["alpha/collapsed_conv1"] == 0.0


def test_alpha_similarity_rows_are_one_minus_total_variation_normalised_for_every_layer():
    counts = [[10, 0, 0], [5, 5, 0], [0, 2, 8], [1, 1, 1]]
    algo = make_pfedla(num_clients=4, alpha="similarity")
    algo.set_label_counts(counts)
    expected = torch.zeros(4, 4, dtype=torch.float64)
    for i in range(4):
        for j in range(4):
            p = [c / sum(counts[i]) for c in counts[i]]
            q = [c / sum(counts[j]) for c in counts[j]]
            expected[i, j] = 1 - 0.5 * sum(abs(a - b) for a, b in zip(p, q))
    assert expected[0, 2] == 0.0 and expected[0, 1] == 0.5  # disjoint labels: 0; half shared: 0.5
    torch.testing.assert_close(label_similarity(counts), expected)
    expected = expected / expected.sum(1, keepdim=True)
    alpha, _ = algo.current_alpha()
    for layer in range(len(algo.layers)):
        torch.testing.assert_close(alpha[:, layer].double(), expected, rtol=1e-6, atol=1e-7)


def test_fixed_alpha_resumes_from_its_checkpoint_with_the_same_rule(synthetic_cfg, tmp_path):
    common = ("algorithm=pfedla_similarity", *COMMON)
    run(synthetic_cfg(*common), tmp_path / "straight")
    run(synthetic_cfg(*common, "federation.rounds=1"), tmp_path / "cut")
    run(synthetic_cfg(*common, f"resume={tmp_path / 'cut'}"), tmp_path / "cut")
    assert (tmp_path / "cut/metrics.csv").read_text() == (tmp_path / "straight/metrics.csv").read_text()


def test_fixed_alpha_options_are_checked_before_training(synthetic_cfg):
    with pytest.raises(ConfigError, match=r"^algorithm.alpha=learnt is unknown"):
        validate_config(synthetic_cfg("algorithm.alpha=learnt"))
    with pytest.raises(ConfigError, match=r"^algorithm.k must be 0 with a fixed algorithm.alpha=uniform"):
        validate_config(synthetic_cfg("algorithm=heurpfedla", "algorithm.alpha=uniform"))
    with pytest.raises(ConfigError, match=r"^federation.unseen_fraction needs a recipe for new clients"):
        validate_config(synthetic_cfg("algorithm=pfedla_similarity", "federation.unseen_fraction=0.25"))


def _collapse_layer_onto_self(algo, layer: int, self_score: float) -> None:
    """Client 0's scores for ``layer``: ``self_score`` on itself, -1 on every peer, whatever the embedding."""
    n = algo.num_clients
    rows = slice(layer * n, (layer + 1) * n)
    with torch.no_grad():
        algo.hypernetworks.head_weight[0, rows] = 0.0
        algo.hypernetworks.head_bias[0, rows] = -1.0
        algo.hypernetworks.head_bias[0, layer * n] = self_score


@pytest.mark.parametrize("self_score", [1.0, -1.0])  # one-hot by relu(s)/sum, or by the all-zero fallback
def test_relu_alpha_with_every_peer_score_nonpositive_gets_zero_gradient_from_that_layer(self_score):
    algo = make_pfedla(num_clients=4, hn_optimizer="sgd", hn_lr=0.1)
    layer = 1
    _collapse_layer_onto_self(algo, layer, self_score)
    names = algo.layers[algo.layer_names[layer]]

    def gradients(peer_score):
        with torch.no_grad():
            algo.hypernetworks.head_bias[0, layer * 4 + 2: layer * 4 + 4] = peer_score
        clients = torch.tensor([0])
        rows = algo.hypernetworks.rows(clients)
        alpha = algo.hypernetworks.alpha(clients, rows)
        theta_bar = {n: torch.einsum("sj,j...->s...", alpha[:, layer], algo.client_params[n]) for n in names}
        delta = [torch.randn_like(theta_bar[n]) for n in names]  # a client update in that layer alone
        return alpha, torch.autograd.grad(list(theta_bar.values()), list(rows.values()), grad_outputs=delta)

    alpha, grads = gradients(peer_score=-1.0)
    assert alpha[0, layer].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert all(torch.count_nonzero(g) == 0 for g in grads)  # embedding, body and every head: nothing moves
    _, grads = gradients(peer_score=0.5)  # two peers with positive scores: the layer learns again
    assert any(torch.count_nonzero(g) > 0 for g in grads)


def test_collapsed_share_per_layer_counts_clients_whose_peers_get_nothing():
    algo = make_pfedla(num_clients=4)
    _collapse_layer_onto_self(algo, layer=2, self_score=1.0)
    shares = algo.round_metrics()
    alpha, _ = algo.current_alpha()
    for l, layer in enumerate(algo.layer_names):
        by_hand = sum(all(alpha[i, l, j] == 0 for j in range(4) if j != i) for i in range(4)) / 4
        assert shares[f"alpha/collapsed_{layer}"] == by_hand
    assert shares[f"alpha/collapsed_{algo.layer_names[2]}"] >= 0.25


def test_fixed_alpha_new_client_recipe_uniform_starts_from_the_mean_of_all_models():
    algo = make_pfedla(num_clients=3, alpha="uniform")
    initial = ClientModel({n: torch.zeros_like(t[0]) for n, t in algo.client_params.as_dict().items()},
                          algo.client_buffers.row(0))
    seen = []

    def fit(model, r):
        seen.append(model)
        return ClientModel({n: t + 1.0 for n, t in model.params.items()}, model.buffers)

    algo.personalize_new_client(initial, fit, rounds=1, generator=torch.Generator())
    for name in algo.param_names:
        mean = (sum(algo.client_params[name][j] for j in range(3)) + initial.params[name]) / 4
        torch.testing.assert_close(seen[0].params[name], mean, rtol=1e-6, atol=1e-7)


def test_a_checkpoint_from_before_alpha_and_test_images_existed_resumes_and_a_changed_test_set_is_refused():
    from pfedla.compatibility import check_resume_compatible, with_added_keys

    current = {"seed": 0, "algorithm": {"name": "pfedla", "k": 0, "alpha": "learned", "hn_lr": 0.01},
               "dataset": {"name": "fmnist", "fraction": 1.0, "test_images": "pooled"}}
    older = {"seed": 0, "algorithm": {"name": "pfedla", "k": 0, "hn_lr": 0.01},
             "dataset": {"name": "fmnist", "fraction": 1.0}}
    check_resume_compatible(older, current)  # ran as alpha=learned on pooled test images: the same federation
    assert "alpha" not in with_added_keys({"algorithm": {"name": "fedavg"}})["algorithm"]  # pFedLA's key only
    held_out = {**current, "dataset": {**current["dataset"], "test_images": "held_out"}}
    with pytest.raises(ConfigError, match=r"dataset.test_images: 'pooled' -> 'held_out'"):
        check_resume_compatible(older, held_out)
