"""pFedLA's round, proven step by step against independent computations (README "Correctness")."""

import copy

import pytest
import torch

from pfedla.algorithms.base import RoundContext
from pfedla.algorithms.pfedla import aggregate
from pfedla.algorithms.stacked import ClientModel
from pfedla.engines.loop import train_client
from tests.helpers import make_pfedla, tiny_model, toy_batch


def _distance(a: dict, b: dict) -> float:
    return sum(((a[n] - b[n]) ** 2).sum().item() for n in a)


def _theta_bar(algo, i: int, thetas: dict) -> dict:
    """theta_bar_i from the algorithm's *current* hypernetwork and the given client models."""
    with torch.no_grad():
        alpha = algo.hypernetworks.alpha(torch.tensor([i]))
        return {n: t[0] for n, t in aggregate(thetas, alpha, algo.layers).items()}


def _one_round(algo, clients, trained_of):
    algo.begin_round(RoundContext(1, clients))
    sent = {i: algo.model_for(i) for i in clients}
    trained = {i: trained_of(i, sent[i]) for i in clients}
    for i in clients:
        algo.receive(i, sent[i], trained[i], 10)
    algo.end_round()
    return sent, trained


def _local_training(dtype=torch.float64):
    model = tiny_model().to(dtype)
    x, y = toy_batch(dtype=dtype)

    def train(i, sent):
        params, buffers, _ = train_client(model, sent.params, sent.buffers, x, y, epochs=2, batch_size=4, lr=0.1)
        return ClientModel(params, buffers)

    return train


def _random_update(scale=0.05, seed=7):
    gen = torch.Generator().manual_seed(seed)

    def train(i, sent):
        return ClientModel(
            {n: t + scale * torch.randn(t.shape, generator=gen, dtype=t.dtype) for n, t in sent.params.items()},
            sent.buffers,
        )

    return train


@pytest.mark.parametrize("normalisation, optimizer", [("relu", "sgd"), ("softmax", "sgd"), ("relu", "adam")])
def test_hypernetwork_step_moves_personalized_model_toward_trained_model(normalisation, optimizer):
    lr = 1e-3 if optimizer == "sgd" else 1e-4
    algo = make_pfedla(num_clients=4, dtype=torch.float64, hn_lr=lr, normalisation=normalisation,
                       hn_optimizer=optimizer)
    thetas = {n: t.clone() for n, t in algo.server_view.items()}  # start-of-round theta_j
    before = {i: _theta_bar(algo, i, thetas) for i in range(4)}
    sent, trained = _one_round(algo, [0, 1, 2, 3], _local_training())
    for i in range(4):
        torch.testing.assert_close(sent[i].params, before[i])
        after = _theta_bar(algo, i, thetas)  # only psi_i changed
        assert _distance(after, trained[i].params) < _distance(before[i], trained[i].params), f"client {i}"


def test_hypernetwork_gradient_matches_finite_differences():
    """The applied update equals -lr * d/dpsi <theta_bar_i(psi), -Delta_i>, by central differences."""
    lr = 1e-3
    algo = make_pfedla(num_clients=3, dtype=torch.float64, hn_lr=lr)
    original = copy.deepcopy(algo.hypernetworks)
    thetas = {n: t.clone() for n, t in algo.server_view.items()}
    sent, trained = _one_round(algo, [0, 1, 2], _random_update())

    def objective(hypernetworks, i):
        with torch.no_grad():
            alpha = hypernetworks.alpha(torch.tensor([i]))
            bar = aggregate(thetas, alpha, algo.layers)
            return sum((bar[n][0] * -(trained[i].params[n] - sent[i].params[n])).sum() for n in bar).item()

    eps = 1e-6
    for name in ("embeddings", "body_weights.0", "body_biases.2", "head_weight", "head_bias"):
        for i in range(3):
            before, after = dict(original.named_parameters()), dict(algo.hypernetworks.named_parameters())
            applied = before[name][i] - after[name][i]
            implied_grad = (applied / lr).flatten()
            for flat in torch.linspace(0, implied_grad.numel() - 1, 4).long().tolist():
                probe = copy.deepcopy(original)
                param = dict(probe.named_parameters())[name]
                with torch.no_grad():
                    param[i].view(-1)[flat] += eps
                up = objective(probe, i)
                with torch.no_grad():
                    param[i].view(-1)[flat] -= 2 * eps
                down = objective(probe, i)
                fd = (up - down) / (2 * eps)
                assert implied_grad[flat].item() == pytest.approx(fd, rel=1e-4, abs=1e-9), (name, i, flat)


def test_every_send_uses_the_start_of_round_state_and_theta_is_replaced_after():
    algo = make_pfedla(num_clients=3, dtype=torch.float64)
    thetas = {n: t.clone() for n, t in algo.server_view.items()}
    expected = {i: _theta_bar(algo, i, thetas) for i in range(3)}
    sent, trained = _one_round(algo, [0, 1, 2], _random_update())
    for i in range(3):
        # A batched einsum and a one-client einsum may round differently (seen: 5.5e-17 on AVX-512), so float
        # tolerance; sending the client's own model or an end-of-round state would differ by ~1e-2.
        torch.testing.assert_close(sent[i].params, expected[i], rtol=1e-10, atol=1e-12)
        for n in algo.param_names:
            assert torch.equal(algo.client_params[n][i], trained[i].params[n])


def test_unsampled_clients_keep_model_and_hypernetwork():
    algo = make_pfedla(num_clients=4, dtype=torch.float64)
    params_before = {n: t[2].clone() for n, t in algo.client_params.as_dict().items()}
    hn_before = {n: p[2].clone() for n, p in algo.hypernetworks.named_parameters()}
    _one_round(algo, [0, 3], _random_update())
    assert all(torch.equal(algo.client_params[n][2], t) for n, t in params_before.items())
    assert all(torch.equal(p[2], hn_before[n]) for n, p in algo.hypernetworks.named_parameters())


def test_heurpfedla_keeps_top_k_self_weighted_layers_local_without_head_gradient():
    n, k = 3, 2
    algo = make_pfedla(num_clients=n, dtype=torch.float64, k=k, head_init="uniform", hn_lr=1e-2)
    layers = algo.layer_names  # conv1, conv2, fc1, fc2, fc3
    bias = algo.hypernetworks.head_bias.detach().view(n, len(layers), n)
    with torch.no_grad():  # client i: highest self-weight on fc3 (4), then conv1 (0)
        for i in range(n):
            bias[i, 4, i] = 5.0
            bias[i, 0, i] = 3.0
    head_before = algo.hypernetworks.head_bias.detach().clone().view(n, len(layers), n)
    own_before = {name: t.clone() for name, t in algo.client_params.as_dict().items()}
    uploaded_before = {name: t.clone() for name, t in algo.uploaded_params.as_dict().items()}

    algo.begin_round(RoundContext(1, [0, 1, 2]))
    retained = algo._retained
    assert retained.tolist() == [[True, False, False, False, True]] * n
    sent = {i: algo.model_for(i) for i in range(n)}
    for i in range(n):
        for l in (0, 4):
            assert torch.equal(algo.round_alpha[i, l], torch.eye(n, dtype=torch.float64)[i])
            for name in algo.layers[layers[l]]:
                assert torch.equal(sent[i].params[name], own_before[name][i])  # the client's own layer
    trained = {i: _random_update(seed=i)(i, sent[i]) for i in range(n)}
    for i in range(n):
        algo.receive(i, sent[i], trained[i], 10)
    algo.end_round()

    head_after = algo.hypernetworks.head_bias.detach().view(n, len(layers), n)
    for i in range(n):
        assert torch.equal(head_after[i, 0], head_before[i, 0]) and torch.equal(head_after[i, 4], head_before[i, 4])
        assert not torch.equal(head_after[i, 2], head_before[i, 2])  # mixed layers do learn
        for name in algo.layers["fc3"]:  # kept local: client's own copy moves, the server's stays stale
            assert torch.equal(algo.client_params[name][i], trained[i].params[name])
            assert torch.equal(algo.uploaded_params[name][i], uploaded_before[name][i])
        for name in algo.layers["fc1"]:
            assert torch.equal(algo.uploaded_params[name][i], trained[i].params[name])

    kept = sum(algo.client_params[name][0].numel() for l in (0, 4) for name in algo.layers[layers[l]])
    total = sum(algo.client_params[name][0].numel() for name in algo.param_names)
    assert int(algo.bytes_saved) == 2 * n * kept * 8  # down + up, float64
    assert int(algo.bytes_down) == int(algo.bytes_up) == n * (total - kept) * 8


@pytest.mark.parametrize("optimizer, momentum", [("sgd", 0.9), ("adam", 0.0)])
def test_hypernetwork_optimizer_rows_match_torch_optim_for_that_client_alone(optimizer, momentum):
    """Row-wise SGD-momentum / Adam equal torch.optim run on one client's tensors alone, bit for bit (one optimizer
    step for everything: pfedla/optim.py); other rows untouched."""
    algo = make_pfedla(num_clients=3, dtype=torch.float64, hn_lr=1e-2, hn_momentum=momentum, hn_optimizer=optimizer)
    hn = algo.hypernetworks
    own = [p[1].detach().clone().requires_grad_(True) for p in hn.parameters()]
    untouched = [p[2].detach().clone() for p in hn.parameters()]
    reference = (torch.optim.SGD(own, lr=1e-2, momentum=momentum) if optimizer == "sgd"
                 else torch.optim.Adam(own, lr=1e-2))
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in own]
        for p, g in zip(own, grads):
            p.grad = g.clone()
        reference.step()
        hn.step(torch.tensor([0, 1]), {n: torch.stack([torch.zeros_like(g), g]) for (n, _), g in
                                       zip(hn.named_parameters(), grads)})
    for p, expected, still in zip(hn.parameters(), own, untouched):
        assert torch.equal(p[1], expected.detach())  # the very same ops (pfedla/optim.py): bit for bit
        assert torch.equal(p[2], still)
