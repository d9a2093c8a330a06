"""FedAMP and pFedGraph, the methods that, like pFedLA, decide on the server whom each client aggregates with:
their server steps against hand loops (pFedGraph's graph QP against an exhaustive solve), their local objectives
against plain autograd, and their exact reductions to other methods."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.func import functional_call

from pfedla.algorithms.base import Report, RoundContext
from pfedla.algorithms.fedamp import CLOUD, FedAMP
from pfedla.algorithms.pfedgraph import CLUSTER, PFedGraph, graph_rows, project_to_simplex
from pfedla.algorithms.stacked import ClientModel
from pfedla.engines.loop import train_client
from pfedla.run import setup
from tests.helpers import assert_same_personalized_models, tiny_model, toy_batch, trained_module

CLIENT = OmegaConf.create(dict(batch_size=12, lr=0.1, momentum=0.0, weight_decay=0.0))  # one batch of toy_batch(12)


def _simplex_projection_by_supports(v: list[float]) -> list[float]:
    """The Euclidean projection of v onto the simplex, exhaustively: on its support S the projection is v_S
    shifted by one constant so it sums to 1; try every S and keep the nearest point that is >= 0."""
    best, best_distance = None, math.inf
    for size in range(1, len(v) + 1):
        for support in itertools.combinations(range(len(v)), size):
            shift = (sum(v[j] for j in support) - 1) / size
            x = [v[j] - shift if j in support else 0.0 for j in range(len(v))]
            if min(x) >= 0:
                distance = sum((a - b) ** 2 for a, b in zip(x, v))
                if distance < best_distance:
                    best, best_distance = x, distance
    return best


def test_simplex_projection_equals_the_exhaustive_solution():
    gen = torch.Generator().manual_seed(0)
    for n in (1, 2, 3, 5):
        v = torch.randn(40, n, generator=gen, dtype=torch.float64) * 2
        got = project_to_simplex(v)
        for row, out in zip(v, got):
            assert out.tolist() == pytest.approx(_simplex_projection_by_supports(row.tolist()), abs=1e-12)
    assert project_to_simplex(torch.tensor([[0.2, 0.3, 0.5]], dtype=torch.float64)).tolist() == [[0.2, 0.3, 0.5]]


def test_a_graph_row_minimises_the_papers_objective_over_the_simplex():
    gen = torch.Generator().manual_seed(1)
    similarity = torch.rand(4, 4, generator=gen, dtype=torch.float64) * 2 - 1
    shares = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    alpha = 0.8
    rows = graph_rows(similarity, shares, alpha)
    objective = lambda a, s: alpha * ((a - shares) ** 2).sum(-1) - (a * s).sum(-1)
    points = torch.distributions.Dirichlet(torch.ones(4, dtype=torch.float64)).sample((20000,))
    for row, s in zip(rows, similarity):
        assert row.min() >= 0 and row.sum().item() == pytest.approx(1.0)
        assert objective(row, s) <= objective(points, s).min() + 1e-12
    # a large alpha gives the data shares (FedAvg's weights); equal sizes a uniform graph
    assert torch.allclose(graph_rows(similarity, shares, 1e12), shares.expand(4, 4))
    assert torch.allclose(graph_rows(similarity, torch.full((4,), 0.25, dtype=torch.float64), 1e12),
                          torch.full((4, 4), 0.25, dtype=torch.float64))


def _trained(model, gen, scale=0.3) -> ClientModel:
    params = {n: p.detach() + scale * torch.randn(p.shape, generator=gen) for n, p in model.named_parameters()}
    buffers = {n: (b + torch.rand(b.shape, generator=gen)) if b.is_floating_point() else b + 3
               for n, b in model.named_buffers()}
    return ClientModel(params, buffers)


def test_pfedgraph_server_step_matches_a_hand_loop_and_leaves_a_client_that_sat_out_alone():
    model = tiny_model(batch_norm=True)
    algo = PFedGraph(model, 3, OmegaConf.create(dict(alpha=0.5, lam=0.01)))
    gen = torch.Generator().manual_seed(2)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    before = {k: v.clone() for k, v in algo.state_dict().items()}
    trained = {0: _trained(model, gen), 2: _trained(model, gen)}
    with torch.no_grad():  # client 0 and 2 moved alike: their cosine is above 0.9 and counts as 1
        for n in trained[2].params:
            trained[2].params[n] = trained[0].params[n] + 0.01 * (trained[2].params[n] - initial[n])
    sizes = {0: 10, 2: 30}
    algo.receive_round([Report(i, algo.model_for(i), trained[i], sizes[i]) for i in (0, 2)])

    names = list(initial)
    flat = {i: torch.cat([(trained[i].params[n] - initial[n]).double().flatten() for n in names]) for i in (0, 2)}
    cos = lambda a, b: float(flat[a] @ flat[b] / (flat[a].norm() * flat[b].norm()))
    assert 0.9 < cos(0, 2) < 1 - 1e-9
    for i in (0, 2):
        s = [1.0 if i == j else (1.0 if cos(i, j) > 0.9 else cos(i, j)) for j in (0, 2)]
        v = [sizes[j] / 40 + s[k] / (2 * 0.5) for k, j in enumerate((0, 2))]
        a = _simplex_projection_by_supports(v)
        assert algo.graph[i, [0, 2]].tolist() == pytest.approx(a, abs=1e-12) and algo.graph[i, 1] == 0
        for n in names:
            by_hand = sum(a[k] * trained[j].params[n].double() for k, j in enumerate((0, 2)))
            torch.testing.assert_close(algo.client_params[n][i], by_hand.float())
            norm = lambda j: torch.cat([trained[j].params[m].double().flatten() for m in names]).norm()
            cluster = sum(a[k] * trained[j].params[n].double() / norm(j) for k, j in enumerate((0, 2)))
            torch.testing.assert_close(algo.cluster[n][i], cluster.float())
        for n, b in model.named_buffers():  # BatchNorm statistics are aggregated too (the authors' code)
            by_hand = sum(a[k] * trained[j].buffers[n].double() for k, j in enumerate((0, 2)))
            expected = by_hand.float() if b.is_floating_point() else by_hand.round().to(b.dtype)
            torch.testing.assert_close(algo.client_buffers[n][i], expected)
    after = algo.state_dict()
    for k, v in before.items():  # client 1 sat out: its model, cluster vector and graph row are unchanged
        if v.dim() and v.shape[0] == 3 and k != "graph":
            assert torch.equal(after[k][1], v[1]), k
    assert algo.graph[1].abs().sum() == 0
    # what the next round sends: the aggregate and the cluster vector (counted, now that the client has one)
    down = int(algo.bytes_down)
    sent = algo.model_for(0)
    assert torch.equal(sent.params[CLUSTER + names[0]], algo.cluster[names[0]][0])
    model_bytes = sum(t.numel() * t.element_size() for t in [*algo.client_params.row(0).values(),
                                                                 *algo.client_buffers.row(0).values()])
    cluster_bytes = sum(t.numel() * t.element_size() for t in algo.cluster.row(0).values())
    assert int(algo.bytes_down) - down == model_bytes + cluster_bytes


@pytest.mark.parametrize("lam", [0.5, -0.5])  # -0.5: the authors' code's sign, a push away
def test_pfedgraph_local_step_is_sgd_on_cross_entropy_minus_lam_times_the_graph_weighted_cosines(lam):
    model = tiny_model()
    algo = PFedGraph(model, 3, OmegaConf.create(dict(alpha=5.0, lam=lam)))
    gen = torch.Generator().manual_seed(3)
    trained = {j: _trained(model, gen, scale=1.0) for j in range(3)}
    algo.receive_round([Report(j, algo.model_for(j), trained[j], 10 + j) for j in range(3)])
    a = algo.graph[0].tolist()
    assert sum(x > 0 for x in a) >= 2  # the client has neighbours
    sent = algo.model_for(0)
    x, y = toy_batch(12)
    got, _, _ = train_client(model, sent.params, sent.buffers, x, y, generator=torch.Generator().manual_seed(0),
                             **algo.local_plan(1).training_args(CLIENT))
    flat = lambda m: torch.cat([m[n].flatten() for n in algo.param_names])
    w = {n: sent.params[n].clone().requires_grad_(True) for n in algo.param_names}
    logits = functional_call(model, {**w, **sent.buffers}, (x,))
    cosines = sum(a[j] * F.cosine_similarity(flat(w), flat(trained[j].params), dim=0) for j in range(3))
    grads = torch.autograd.grad(F.cross_entropy(logits, y) - lam * cosines, list(w.values()))
    for (n, p), g in zip(w.items(), grads):
        torch.testing.assert_close(got[n], p.detach() - 0.1 * g, rtol=1e-5, atol=1e-6)
    plain, _, _ = train_client(model, {n: sent.params[n] for n in algo.param_names}, sent.buffers, x, y,
                               generator=torch.Generator().manual_seed(0), **algo.adapt_plan(1).training_args(CLIENT))
    assert not torch.allclose(plain["fc3.weight"], got["fc3.weight"])  # the pull changed the step


def test_pfedgraph_with_a_huge_alpha_and_no_pull_is_fedavg(synthetic_cfg, tmp_path):
    common = ("model=cnn_bn", "federation.participation=1.0", "federation.adapt_every=0")
    graph = trained_module(synthetic_cfg, tmp_path / "graph", "algorithm=pfedgraph", "algorithm.alpha=1e12",
                           "algorithm.lam=0", *common)
    fedavg = trained_module(synthetic_cfg, tmp_path / "fedavg", "algorithm=fedavg", *common)
    header = (tmp_path / "graph/metrics.csv").read_text().splitlines()[0].split(",")
    assert header[-1] == "pfedgraph/self_weight"  # the method's own statistic, beside the scores
    sizes = torch.tensor(graph.data.train_sizes, dtype=torch.float64)
    assert torch.allclose(graph.algorithm.graph, (sizes / sizes.sum()).expand(4, 4))
    assert_same_personalized_models(graph, fedavg)


def test_fedamp_cloud_models_follow_the_papers_attention_by_hand():
    model = tiny_model(batch_norm=True)
    gen = torch.Generator().manual_seed(4)
    for alpha_k, sigma in ((0.05, 2.0), (5.0, 1.0)):  # the second: peers outweigh the client, self-weight < 0
        algo = FedAMP(model, 3, OmegaConf.create(dict(alpha_k=alpha_k, sigma=sigma, lam=0.01)))
        with torch.no_grad():
            for n in algo.param_names:
                algo.client_params[n].add_(0.02 * torch.randn(algo.client_params[n].shape, generator=gen))
        algo.begin_round(RoundContext(1, [0, 2]))
        sent = {i: algo.model_for(i) for i in (0, 2)}
        w = {j: algo.client_params.row(j) for j in range(3)}
        for i in (0, 2):
            xi = {}
            for j in range(3):
                if j != i:
                    d = sum(float(((w[i][n].double() - w[j][n].double()) ** 2).sum()) for n in algo.param_names)
                    xi[j] = alpha_k * math.exp(-d / sigma) / sigma
            xi[i] = 1 - sum(xi.values())
            assert algo.self_weight[i].item() == pytest.approx(xi[i], abs=1e-12)
            if alpha_k == 5.0:
                assert xi[i] < 0
            for n in algo.param_names:
                u = sum(xi[j] * w[j][n].double() for j in range(3))
                torch.testing.assert_close(sent[i].params[CLOUD + n], u.float())
                assert torch.equal(sent[i].params[n], w[i][n])  # it trains its own model
            for n in algo.buffer_names:
                assert torch.equal(sent[i].buffers[n], algo.client_buffers[n][i])
        cloud_bytes = sum(t.numel() * t.element_size() for t in algo.client_params.row(0).values())
        assert int(algo.bytes_down) == 2 * cloud_bytes


def test_fedamp_local_step_is_sgd_on_cross_entropy_plus_its_pull_towards_the_cloud_model():
    model = tiny_model()
    algo = FedAMP(model, 2, OmegaConf.create(dict(alpha_k=0.1, sigma=1.0, lam=0.02)))
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for n in algo.param_names:
            algo.client_params[n].add_(0.3 * torch.randn(algo.client_params[n].shape, generator=gen))
    algo.begin_round(RoundContext(1, [0]))
    sent = algo.model_for(0)
    x, y = toy_batch(12)
    got, _, _ = train_client(model, sent.params, sent.buffers, x, y, generator=torch.Generator().manual_seed(0),
                             **algo.local_plan(1).training_args(CLIENT))
    w = {n: sent.params[n].clone().requires_grad_(True) for n in algo.param_names}
    logits = functional_call(model, {**w, **sent.buffers}, (x,))
    pull = sum(((w[n] - sent.params[CLOUD + n]) ** 2).sum() for n in w)
    grads = torch.autograd.grad(F.cross_entropy(logits, y) + 0.02 / (2 * 0.1) * pull, list(w.values()))
    for (n, p), g in zip(w.items(), grads):
        torch.testing.assert_close(got[n], p.detach() - 0.1 * g, rtol=1e-5, atol=1e-6)


def test_fedamp_without_its_pull_is_local(synthetic_cfg, tmp_path):
    common = ("model=cnn_bn", "federation.adapt_every=0")
    amp = trained_module(synthetic_cfg, tmp_path / "amp", "algorithm=fedamp", "algorithm.lam=0", *common)
    assert_same_personalized_models(amp, trained_module(synthetic_cfg, tmp_path / "local", "algorithm=local", *common))
    pulled = trained_module(synthetic_cfg, tmp_path / "pulled", "algorithm=fedamp", "algorithm.lam=0.05", *common)
    assert not torch.allclose(pulled.algorithm.client_params["fc3.weight"], amp.algorithm.client_params["fc3.weight"])


@pytest.mark.parametrize("algorithm", ["fedamp", "pfedgraph"])
def test_a_new_client_is_aggregated_by_the_methods_own_rule(synthetic_cfg, algorithm):
    module = setup(synthetic_cfg(f"algorithm={algorithm}", "model=cnn_bn"))
    algo = module.algorithm
    gen = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for n in algo.param_names:
            algo.client_params[n].add_(torch.randn(algo.client_params[n].shape, generator=gen))
            if algorithm == "pfedgraph":
                algo.trained[n].copy_(algo.client_params[n])
    before = {k: v.clone() for k, v in algo.state_dict().items()}
    initial = ClientModel({n: p.detach().clone() for n, p in module.model.named_parameters()},
                          {n: b.clone() for n, b in module.model.named_buffers()})
    sent = []

    def fit(model, r):  # a step that keeps the new client's change apart from every trained client's
        sent.append(model)
        return ClientModel({n: t + 0.1 * (r + 1) for n, t in model.params.items()}, model.buffers)

    out = algo.personalize_new_client(initial, fit, 2, torch.Generator().manual_seed(0))
    assert all(torch.equal(v, algo.state_dict()[k]) for k, v in before.items())  # server state untouched
    assert len(sent) == 2 and set(out.params) == set(initial.params)
    if algorithm == "fedamp":  # round 1 trains from its cloud model among the 4 trained models and its own
        pool = [algo.client_params.row(j) for j in range(4)] + [initial.params]
        d = [sum(float(((initial.params[n].double() - m[n].double()) ** 2).sum()) for n in algo.param_names)
             for m in pool[:4]]
        xi = [algo.alpha_k * math.exp(-dj / algo.sigma) / algo.sigma for dj in d]
        xi.append(1 - sum(xi))
        for n in algo.param_names:
            u = sum(x * m[n].double() for x, m in zip(xi, pool))
            torch.testing.assert_close(sent[0].params[n], u.float())
    else:  # round 1 trains from the initial model; round 2 from its graph row's aggregate of round 1's models
        assert all(torch.equal(sent[0].params[n], initial.params[n]) for n in initial.params)
        pool = [algo.trained.row(j) for j in range(4)] + [{n: t + 0.2 for n, t in initial.params.items()}]
        sizes = torch.tensor(module.data.train_sizes, dtype=torch.float64)
        shares = torch.cat([sizes, sizes.mean()[None]])
        change = [torch.cat([(m[n] - initial.params[n]).double().flatten() for n in algo.param_names]) for m in pool]
        s = [float(change[-1] @ c / (change[-1].norm() * c.norm())) for c in change]
        s = [1.0 if v > 0.9 else v for v in s]
        a = _simplex_projection_by_supports([p / shares.sum().item() + v / (2 * algo.alpha)
                                             for p, v in zip(shares.tolist(), s)])
        for n in algo.param_names:
            torch.testing.assert_close(sent[1].params[n], sum(x * m[n].double() for x, m in zip(a, pool)).float())
