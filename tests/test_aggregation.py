import numpy as np
import pytest
import torch

from pfedla.algorithms.hypernetwork import normalise
from pfedla.algorithms.pfedla import aggregate
from tests.helpers import make_pfedla


def test_aggregation_equals_explicit_per_client_per_layer_loop():
    algo = make_pfedla(num_clients=5)
    clients = torch.tensor([3, 0, 4])
    alpha = algo.hypernetworks.alpha(clients).detach()
    got = aggregate(algo.client_params.as_dict(), alpha, algo.layers)
    for s, i in enumerate(clients.tolist()):
        for l, (layer, names) in enumerate(algo.layers.items()):
            for name in names:
                expected = torch.zeros_like(algo.client_params[name][0])
                for j in range(5):
                    expected += alpha[s, l, j] * algo.client_params[name][j]
                torch.testing.assert_close(got[name][s], expected, msg=f"client {i}, {layer}/{name}")


def test_alpha_rows_are_nonnegative_and_sum_to_one():
    for normalisation in ("relu", "softmax"):
        for head_init in ("random", "uniform"):
            algo = make_pfedla(num_clients=6, normalisation=normalisation, head_init=head_init)
            alpha = algo.hypernetworks.alpha(torch.arange(6)).detach()
            assert alpha.shape == (6, len(algo.layers), 6)
            assert (alpha >= 0).all()
            torch.testing.assert_close(alpha.sum(-1), torch.ones(6, len(algo.layers)))


def test_uniform_head_init_starts_every_layer_at_one_over_n():
    algo = make_pfedla(num_clients=4, head_init="uniform")
    torch.testing.assert_close(algo.hypernetworks.alpha(torch.arange(4)).detach(), torch.full((4, 5, 4), 0.25))


def test_all_zero_scores_fall_back_to_one_hot_on_self():
    scores = torch.tensor([[[-1.0, -2.0, -0.5], [0.0, 0.0, 0.0]], [[1.0, 3.0, 0.0], [-1.0, -1.0, -1.0]]])
    alpha = normalise(scores, torch.tensor([2, 1]), "relu")
    expected = torch.tensor([[[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]], [[0.25, 0.75, 0.0], [0.0, 1.0, 0.0]]])
    torch.testing.assert_close(alpha, expected)


def test_all_zero_fallback_through_the_hypernetwork_has_finite_gradients():
    algo = make_pfedla(num_clients=3)
    with torch.no_grad():
        algo.hypernetworks.head_weight.zero_()
        algo.hypernetworks.head_bias.fill_(-1.0)
    rows = algo.hypernetworks.rows(torch.tensor([1]))
    alpha = algo.hypernetworks.alpha(torch.tensor([1]), rows)
    assert torch.equal(alpha[0], torch.tensor([0.0, 1.0, 0.0]).expand(5, 3))
    alpha.sum().backward()
    assert all(r.grad is not None and torch.isfinite(r.grad).all() for r in rows.values())


def test_batched_hypernetwork_forward_and_backward_equal_per_client_computation():
    algo = make_pfedla(num_clients=5, dtype=torch.float64)
    hn = algo.hypernetworks
    clients = torch.tensor([3, 0, 4])
    weights = torch.randn(3, len(algo.layers), 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    rows = hn.rows(clients)
    (hn.alpha(clients, rows) * weights).sum().backward()

    for s, i in enumerate(clients.tolist()):  # client i alone, as a plain MLP with its own tensors
        own = {name: p[i].detach().clone().requires_grad_(True) for name, p in hn.named_parameters()}
        h = own["embeddings"]
        for k in range(len(hn.body_weights)):
            h = torch.relu(own[f"body_weights.{k}"] @ h + own[f"body_biases.{k}"])
        scores = (own["head_weight"] @ h + own["head_bias"]).view(len(algo.layers), 5)
        positive = torch.relu(scores)
        alpha = positive / positive.sum(-1, keepdim=True)
        torch.testing.assert_close(hn.alpha(clients[s : s + 1])[0], alpha)
        (alpha * weights[s]).sum().backward()
        for name in own:
            torch.testing.assert_close(rows[name].grad[s], own[name].grad, msg=name)


def test_alpha_statistics_equal_a_hand_computation():
    from pfedla.algorithms.alpha_stats import alpha_statistics

    # Clients 0 and 1 hold the same labels (similarity 1), client 2 holds other labels (similarity 0 to both).
    counts = [[5, 5, 0, 0], [1, 1, 0, 0], [0, 0, 3, 7]]
    alpha = np.zeros((3, 2, 3))
    alpha[:, 0] = [[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.25, 0.25, 0.5]]
    alpha[:, 1] = np.eye(3)  # a collapsed layer: everyone keeps their own
    stats = alpha_statistics(alpha, ["a", "b"], counts)
    a = stats["layers"]["a"]
    assert a["self"] == pytest.approx((0.6 + 0.7 + 0.5) / 3) and a["collapsed"] == 0
    assert a["similar_peer"] == pytest.approx((0.3 + 0.2) / 2)  # pairs (0,1), (1,0)
    assert a["dissimilar_peer"] == pytest.approx((0.1 + 0.1 + 0.25 + 0.25) / 4)
    off = [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
    sim = {(0, 1): 1.0, (1, 0): 1.0}
    x = [alpha[i, 0, j] for i, j in off]
    y = [sim.get(p, 0.0) for p in off]
    assert a["corr_with_similarity"] == pytest.approx(np.corrcoef(x, y)[0, 1])
    b = stats["layers"]["b"]
    assert b["self"] == 1 and b["collapsed"] == 1 and b["similar_peer"] == 0
    assert stats["max_abs_from_uniform"] == pytest.approx(1 - 1 / 3)
    assert stats["similar_pairs"] == 2 and stats["dissimilar_pairs"] == 4
