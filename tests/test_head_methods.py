"""FedRoD, FedBABU, FedProto and FedALA, the methods that treat the model's head, its features or its top layers apart
(pfedla/models/contract.py): their local steps against plain autograd, their server steps by hand, their exact
reductions, and what their scores are."""

import copy
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.func import functional_call

from pfedla.algorithms.base import ClientData, LocalPlan, Report, RoundContext
from pfedla.algorithms.fedala import STARTED, WEIGHT, FedALA
from pfedla.algorithms.fedbabu import FedBABU
from pfedla.algorithms.fedpac import COUNTS, MEANS, TARGET, FedPAC, H, V, combination_weights, simplex_qp, statistics
from pfedla.algorithms.fedproto import LOCAL, LOCAL_HAS, FedProto
from pfedla.algorithms.fedrod import LOG_PRIOR, NO_CLASS, PERSONAL_HEAD, FedRoD
from pfedla.algorithms.stacked import ClientModel
from pfedla.engines.evaluation import features_of
from pfedla.engines.loop import train_client
from pfedla.run import run, setup
from tests.helpers import assert_same_personalized_models, assert_states_close, tiny_model, toy_batch, trained_module

CLIENT = OmegaConf.create(dict(batch_size=12, lr=0.1, momentum=0.0, weight_decay=0.0))  # one batch of toy_batch(12)


def _fedrod(counts) -> tuple[FedRoD, torch.nn.Module]:
    model = tiny_model(batch_norm=True)
    algo = FedRoD(model, len(counts), OmegaConf.create(dict(name="fedrod")))
    algo.set_label_counts(counts)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a personal head apart from the generic one, as after some rounds
        for n in algo.personal_head.names:
            algo.personal_head[n].add_(0.5 * torch.randn(algo.personal_head[n].shape, generator=gen))
    return algo, model


def test_fedrod_local_step_is_balanced_softmax_for_the_generic_model_and_cross_entropy_for_the_personal_head():
    algo, model = _fedrod([[5, 0, 7], [4, 4, 4]])  # client 0 has no class 1: log prior -1e4, not -inf
    algo.begin_round(RoundContext(1, [0]))
    sent = algo.model_for(0)
    # to float tolerance: a vectorised log and a scalar one may differ in the last bit (they do on an AMD EPYC)
    torch.testing.assert_close(sent.params[LOG_PRIOR], torch.tensor([math.log(5.0), NO_CLASS, math.log(7.0)]))
    x, y = toy_batch(12)
    y = torch.where(y == 1, torch.zeros_like(y), y)  # its labels are only classes it has
    got, _, _ = train_client(model, sent.params, sent.buffers, x, y, generator=torch.Generator().manual_seed(0),
                             **algo.local_plan(1).training_args(CLIENT))
    assert all(torch.isfinite(t).all() for t in got.values())
    w = {n: sent.params[n].clone().requires_grad_(True) for n in algo.param_names}
    p = {n: sent.params[PERSONAL_HEAD + n].clone().requires_grad_(True) for n in ("weight", "bias")}
    buffers = {n: b.clone() for n, b in sent.buffers.items()}
    features = functional_call(model, {**w, **buffers}, (x,), {"features": True})
    generic = F.linear(features, w["fc3.weight"], w["fc3.bias"])
    prior = torch.tensor([5.0, 0.0, 7.0]).log()
    balanced = F.cross_entropy(generic + prior, y)  # -inf for the missing class: the same loss, by hand
    grads_w = torch.autograd.grad(balanced, list(w.values()))
    mixed = generic.detach() + F.linear(features.detach(), p["weight"], p["bias"])
    grads_p = torch.autograd.grad(F.cross_entropy(mixed, y), list(p.values()))
    for (n, t), g in zip(w.items(), grads_w):
        torch.testing.assert_close(got[n], t.detach() - 0.1 * g, rtol=1e-5, atol=1e-6)
    for (n, t), g in zip(p.items(), grads_p):
        torch.testing.assert_close(got[PERSONAL_HEAD + n], t.detach() - 0.1 * g, rtol=1e-5, atol=1e-6)


def test_fedrod_on_balanced_labels_trains_the_generic_model_as_fedavg_does():
    algo, model = _fedrod([[4, 4, 4], [4, 4, 4]])  # equal counts: the prior shifts every logit alike
    algo.begin_round(RoundContext(1, [1]))
    sent = algo.model_for(1)
    x, y = toy_batch(12)
    got, _, _ = train_client(model, sent.params, sent.buffers, x, y, generator=torch.Generator().manual_seed(0),
                             **algo.local_plan(2).training_args(CLIENT))
    plain = {n: sent.params[n] for n in algo.param_names}
    want, _, _ = train_client(model, plain, sent.buffers, x, y, generator=torch.Generator().manual_seed(0),
                              **LocalPlan.epochs(2).training_args(CLIENT))
    for n in algo.param_names:
        torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-6)


def test_fedrod_scores_generic_plus_personal_logits_and_never_sends_the_personal_head(synthetic_cfg, tmp_path):
    module = setup(synthetic_cfg("algorithm=fedrod", "model=cnn_bn", "federation.adapt_every=0"))
    run(module.cfg, tmp_path / "rod", module=module)
    fedavg = setup(synthetic_cfg("algorithm=fedavg", "model=cnn_bn", "federation.adapt_every=0"))
    run(fedavg.cfg, tmp_path / "avg", module=fedavg)
    algo = module.algorithm
    assert int(algo.bytes_up) == int(fedavg.algorithm.bytes_up)  # body and generic head only
    assert int(algo.bytes_down) == int(fedavg.algorithm.bytes_down)
    assert not torch.allclose(algo.personal_head["weight"][0], algo.personal_head["weight"][1])
    x = module.data.test_x[0][:16]
    for i in (0, 1):
        personalized = algo.personalized_model(i)
        generic = algo.global_model.as_dict()
        state = {**{n: generic[n][0] for n in algo.param_names}, **personalized.buffers}
        model = module.model.eval()
        features = functional_call(model, state, (x,), {"features": True})
        by_hand = (F.linear(features, state["fc3.weight"], state["fc3.bias"])
                   + F.linear(features, algo.personal_head["weight"][i], algo.personal_head["bias"][i]))
        got = functional_call(model, {**personalized.params, **personalized.buffers}, (x,))
        torch.testing.assert_close(got, by_hand, rtol=1e-5, atol=1e-5)


def test_fedbabu_never_trains_the_head_and_fine_tunes_the_whole_model_for_score_b(synthetic_cfg, tmp_path):
    module = setup(synthetic_cfg("algorithm=fedbabu", "model=cnn_bn", "algorithm.finetune_epochs=2",
                                 "algorithm.finetune_lr=0.02"))
    initial = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    summary = run(module.cfg, tmp_path / "babu", module=module)
    algo = module.algorithm
    for n in ("fc3.weight", "fc3.bias"):  # every client's head and the global one: the initial head, bit for bit
        assert torch.equal(algo.global_model[n][0], initial[n])
        assert all(torch.equal(algo.client_params[n][i], initial[n]) for i in range(4))
    assert not torch.equal(algo.global_model["fc2.weight"][0], initial["fc2.weight"])  # the body learned
    adapt = algo.adapt_plan(1).training_args(module.cfg.client)
    assert adapt["phases"] == ((2, None),) and adapt["lr"] == 0.02  # the whole model, finetune_epochs at its lr
    assert summary["final_adapted"]["test/adapted_acc_mean"] > summary["final"]["test/acc_mean"]  # 0.77 vs 0.28


def test_fedbabus_local_step_is_fedavgs_on_the_body_alone():
    model = tiny_model()
    algo = FedBABU(model, 2, OmegaConf.create(dict(finetune_epochs=5, finetune_lr=1e-3)))
    algo.begin_round(RoundContext(1, [0]))
    sent = algo.model_for(0)
    x, y = toy_batch(12)
    got, _, _ = train_client(model, sent.params, sent.buffers, x, y, generator=torch.Generator().manual_seed(0),
                             **algo.local_plan(1).training_args(CLIENT))
    w = {n: t.clone().requires_grad_(True) for n, t in sent.params.items()}
    grads = torch.autograd.grad(F.cross_entropy(functional_call(model, w, (x,)), y), list(w.values()))
    for (n, t), g in zip(w.items(), grads):
        want = t.detach() if n.startswith("fc3.") else t.detach() - 0.1 * g
        torch.testing.assert_close(got[n], want, rtol=1e-5, atol=1e-6)


def _fedproto(ld=0.5, num_clients=3):
    model = tiny_model(batch_norm=True)
    return FedProto(model, num_clients, OmegaConf.create(dict(ld=ld))), model


def _features_by_hand(model, params, buffers, x):
    model.eval()
    return functional_call(model, {**{n: params[n] for n, _ in model.named_parameters()}, **buffers}, (x,),
                           {"features": True})


def test_fedproto_prototypes_are_class_means_of_the_features_and_the_server_averages_them_unweighted():
    algo, model = _fedproto()
    gen = torch.Generator().manual_seed(1)
    reports, by_hand = [], {}
    for i, classes in ((0, [0, 1]), (2, [1, 2])):  # client 1 sits out; class 0 only at client 0
        sent = algo.model_for(i)
        x = torch.randn(9, 1, 16, 16, generator=gen)
        y = torch.tensor([classes[k % 2] for k in range(9)])
        with torch.no_grad():
            trained = ClientModel({n: t + 0.1 for n, t in sent.params.items()}, sent.buffers)
        features = lambda m, xs: features_of(model, m.params, m.buffers, xs)
        up = algo.local_plan(1).finish(trained, x, y, features)
        f = _features_by_hand(model, trained.params, trained.buffers, x)
        for c in range(3):
            rows = [k for k in range(9) if y[k] == c]
            mean = sum(f[k] for k in rows) / len(rows) if rows else torch.zeros(f.shape[1])
            torch.testing.assert_close(up[LOCAL][c], mean, rtol=1e-5, atol=1e-6)
            assert up[LOCAL_HAS][c] == (1.0 if rows else 0.0)
        by_hand[i] = {c: up[LOCAL][c] for c in classes}
        reports.append(Report(i, sent, ClientModel({**trained.params, **up}, trained.buffers), 9))
    down = int(algo.bytes_down)
    algo.receive_round(reports)
    torch.testing.assert_close(algo.global_protos[0], by_hand[0][0])
    torch.testing.assert_close(algo.global_protos[1], (by_hand[0][1] + by_hand[2][1]) / 2)  # unweighted
    torch.testing.assert_close(algo.global_protos[2], by_hand[2][2])
    assert algo.global_has.tolist() == [1.0, 1.0, 1.0] and down == 2 * 3  # round 1: no prototypes yet, 3 flags
    row = algo.global_protos.shape[1] * 4
    assert int(algo.bytes_up) == 2 * (2 * row + 3)  # two classes each, and their flags; never the model
    assert torch.equal(algo.client_params["fc3.weight"][0], reports[0].trained.params["fc3.weight"])


def test_fedproto_local_step_is_cross_entropy_plus_ld_times_the_mse_to_the_labels_prototypes():
    algo, model = _fedproto(ld=0.7)
    with torch.no_grad():
        algo.global_protos.copy_(torch.randn(algo.global_protos.shape, generator=torch.Generator().manual_seed(2)))
        algo.global_has.copy_(torch.tensor([1.0, 0.0, 1.0]))  # class 1 has no prototype: adds zero, still counted
    sent = algo.model_for(0)
    x, y = toy_batch(12)
    got, _, _ = train_client(model, sent.params, sent.buffers, x, y, generator=torch.Generator().manual_seed(0),
                             **algo.local_plan(1).training_args(CLIENT))
    w = {n: sent.params[n].clone().requires_grad_(True) for n in algo.param_names}
    model.train()
    features = functional_call(model, {**w, **{n: b.clone() for n, b in sent.buffers.items()}}, (x,),
                               {"features": True})
    logits = F.linear(features, w["fc3.weight"], w["fc3.bias"])
    squared = sum(((features[k] - algo.global_protos[y[k]]) ** 2).sum() for k in range(12) if y[k] != 1)
    loss = F.cross_entropy(logits, y) + 0.7 * squared / features.numel()
    assert (y == 1).any() and (y != 1).any()
    grads = torch.autograd.grad(loss, list(w.values()), retain_graph=True)
    for (n, t), g in zip(w.items(), grads):
        torch.testing.assert_close(got[n], t.detach() - 0.1 * g, rtol=1e-5, atol=1e-6)
    plain = torch.autograd.grad(F.cross_entropy(logits, y), list(w.values()))
    assert (grads[0] - plain[0]).abs().max() * 0.1 > 1e-4  # the prototype term moved the step, well above tolerance


def test_fedproto_without_its_prototype_term_is_local(synthetic_cfg, tmp_path):
    common = ("model=cnn_bn", "federation.adapt_every=0")
    proto = trained_module(synthetic_cfg, tmp_path / "proto", "algorithm=fedproto", "algorithm.ld=0", *common)
    assert_same_personalized_models(proto, trained_module(synthetic_cfg, tmp_path / "local", "algorithm=local",
                                                          *common))
    assert proto.algorithm.global_has.sum() > 0 and int(proto.algorithm.bytes_up) > 0
    pulled = trained_module(synthetic_cfg, tmp_path / "pulled", "algorithm=fedproto", "algorithm.ld=10", *common)
    moved = pulled.algorithm.client_params["fc2.weight"] - proto.algorithm.client_params["fc2.weight"]
    assert moved.abs().max() > 1e-4


def _fedala(**over):
    model = tiny_model(batch_norm=True)
    cfg = {**dict(layers=2, eta=1.0, percent=0.5, threshold=0.1, window=10, max_passes=50), **over}
    algo = FedALA(model, 2, OmegaConf.create(cfg))
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():  # client 0's own model apart from the global one, as after a round
        for n in algo.param_names:
            algo.client_params[n][0].add_(0.3 * torch.randn(algo.client_params[n][0].shape, generator=gen))
    return algo, model


@pytest.mark.parametrize("started, passes", [(1.0, 1), (0.0, 3)])  # later rounds: one pass; the first: to the cap
def test_fedala_learns_its_weights_by_the_gradient_of_the_mixed_models_loss(started, passes):
    algo, model = _fedala(max_passes=3, threshold=0.0)  # std < 0 never holds: the first adaptation runs 3 passes
    algo.started[0] = started
    sent = algo.model_for(0)
    x, y = toy_batch(20, seed=3)
    data = ClientData(None, x, y, torch.Generator().manual_seed(5), batch_size=4)
    start, added = algo.local_plan(1).prepare(sent, data)
    # By hand: the same share of the train split, batch by batch, with an nn.Module
    offset = int(torch.randint(0, 20 - 10 + 1, (1,), generator=torch.Generator().manual_seed(5)))
    local, glob = algo.client_params.row(0), algo.global_model.as_dict()
    top, lower = ["fc3.weight", "fc3.bias"], [n for n in algo.param_names if not n.startswith("fc3.")]
    weights = {n: torch.ones_like(local[n]) for n in top}
    net = copy.deepcopy(model).train()
    for _ in range(passes):
        for s in range(offset, offset + 10, 4):
            stop = min(s + 4, offset + 10)
            state = {**{n: glob[n][0] for n in lower},
                     **{n: local[n] + (glob[n][0] - local[n]) * weights[n] for n in top}}
            net.load_state_dict({**state, **algo.client_buffers.row(0)}, strict=True)
            net.zero_grad()
            F.cross_entropy(net(x[s:stop]), y[s:stop]).backward()
            params = dict(net.named_parameters())
            for n in top:
                weights[n] = (weights[n] - 1.0 * params[n].grad * (glob[n][0] - local[n])).clamp(0, 1)
    for n in top:
        torch.testing.assert_close(added[WEIGHT + n], weights[n], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(start.params[n], local[n] + (glob[n][0] - local[n]) * weights[n])
    for n in lower:  # the lower tensors are the global model's
        assert torch.equal(start.params[n], glob[n][0])
    assert added[STARTED] == 1.0 and not all(torch.equal(weights[n], torch.ones_like(weights[n])) for n in top)


def test_fedala_skips_round_one_and_with_weights_held_at_one_is_fedavg(synthetic_cfg, tmp_path):
    algo, _ = _fedala()
    sent = algo.model_for(1)  # client 1's model still equals the global one
    start, added = algo.local_plan(1).prepare(sent, ClientData(None, *toy_batch(8), torch.Generator(), 4))
    assert all(torch.equal(start.params[n], algo.global_model[n][0]) for n in algo.param_names)
    assert added[STARTED] == 0 and all(torch.equal(added[WEIGHT + n], torch.ones_like(added[WEIGHT + n]))
                                       for n in ("fc3.weight", "fc3.bias"))
    common = ("model=cnn", "federation.adapt_every=0", "federation.rounds=3")
    ala = setup(synthetic_cfg("algorithm=fedala", "algorithm.eta=1e-30", *common))  # W stays 1: start from global
    run(ala.cfg, tmp_path / "ala", module=ala)
    fedavg = setup(synthetic_cfg("algorithm=fedavg", *common))
    run(fedavg.cfg, tmp_path / "avg", module=fedavg)
    assert_states_close({n: ala.algorithm.global_model[n] for n in ala.algorithm.param_names},
                        fedavg.algorithm.global_model.as_dict(), rtol=1e-4, atol=1e-5)
    assert ala.algorithm.started.sum() == 4  # every client made its first adaptation in round 2


def _qp_by_supports(matrix: np.ndarray) -> np.ndarray:
    """argmin a'Ma over the simplex, exhaustively: on each support S the equality-constrained minimiser (KKT), the
    feasible one of least value."""
    m, best, value = len(matrix), None, np.inf
    for size in range(1, m + 1):
        for support in itertools.combinations(range(m), size):
            s = list(support)
            kkt = np.zeros((size + 1, size + 1))
            kkt[:size, :size], kkt[:size, size], kkt[size, :size] = 2 * matrix[np.ix_(s, s)], 1, 1
            solution = np.linalg.lstsq(kkt, np.r_[np.zeros(size), 1.0], rcond=None)[0][:size]
            if solution.min() >= -1e-12:
                a = np.zeros(m)
                a[s] = solution
                if a @ matrix @ a < value - 1e-15:
                    best, value = a, a @ matrix @ a
    return best


def test_fedpacs_qp_solver_matches_the_exhaustive_solution():
    rng = np.random.default_rng(0)
    for m in (1, 2, 3, 4, 5):
        for _ in range(8):
            root = rng.normal(size=(m, m)) * rng.uniform(0.1, 3)
            matrix = root @ root.T + np.diag(rng.uniform(0, 0.5, m))
            got, want = simplex_qp(matrix), _qp_by_supports(matrix)
            assert got @ matrix @ got == pytest.approx(want @ matrix @ want, abs=1e-9)
            np.testing.assert_allclose(got, want, atol=1e-4)


def test_fedpac_statistics_and_head_weights_by_hand():
    gen = torch.Generator().manual_seed(8)
    f, y = torch.randn(10, 4, generator=gen, dtype=torch.float64), torch.tensor([0, 0, 0, 2, 2, 0, 2, 0, 0, 2])
    v, h = statistics(f, y, 3)
    p = {c: float((y == c).sum()) / 10 for c in range(3)}
    mu = {c: f[y == c].mean(0) if (y == c).any() else torch.zeros(4, dtype=torch.float64) for c in range(3)}
    by_hand = sum(p[c] * float((f[y == c] ** 2).sum(1).mean()) - p[c] ** 2 * float(mu[c] @ mu[c])
                  for c in range(3) if p[c] > 0) / 10
    assert v.item() == pytest.approx(by_hand, rel=1e-12)
    for c in range(3):
        torch.testing.assert_close(h[c], p[c] * mu[c])
    hs = torch.randn(3, 3, 4, generator=gen, dtype=torch.float64)  # three participants' h
    vs = torch.tensor([0.5, 0.2, 0.9], dtype=torch.float64)
    weights = combination_weights(vs, hs, 1)
    matrix = np.diag(vs.numpy()).astype(float)
    for j in range(3):
        for k in range(3):
            matrix[j, k] += sum(float((hs[1, c] - hs[j, c]) @ (hs[1, c] - hs[k, c])) for c in range(3))
    want = _qp_by_supports(matrix)
    want = np.where(want > 1e-3, want, 0)
    np.testing.assert_allclose(weights.numpy(), want / want.sum(), atol=1e-4)
    assert weights.sum().item() == pytest.approx(1.0) and weights[1] > 0


def test_fedpac_trains_its_head_first_then_its_body_with_feature_alignment():
    model = tiny_model(batch_norm=True)
    algo = FedPAC(model, 2, OmegaConf.create(dict(lam=0.6, head_epochs=1, head_lr=0.3)))
    gen = torch.Generator().manual_seed(9)
    with torch.no_grad():
        algo.centroids["centroids"][0].copy_(torch.randn(3, 4, generator=gen))
        algo.centroids["has"][0].copy_(torch.tensor([1.0, 0.0, 1.0]))  # class 1: the client's own mean instead
    algo.begin_round(RoundContext(1, [0]))
    sent = algo.model_for(0)
    x, y = toy_batch(12)
    plan = algo.local_plan(1)
    start, added = plan.prepare(sent, ClientData(None, x, y, torch.Generator(), 12))
    got, _, _ = train_client(model, start.params, start.buffers, x, y, generator=torch.Generator().manual_seed(0),
                             **plan.training_args(CLIENT))
    own = {n: start.params[n].clone() for n in algo.param_names}
    buffers = {n: b.clone() for n, b in start.buffers.items()}
    model.eval()
    f0 = functional_call(model, {**own, **buffers}, (x,), {"features": True}).double()
    target = torch.stack([algo.centroids["centroids"][0][c] if c != 1 else f0[y == 1].mean(0).float()
                          for c in range(3)])
    torch.testing.assert_close(start.params[TARGET], target)
    v, h = statistics(f0, y, 3)
    torch.testing.assert_close(added[V], v.float())
    # By hand: one step of the head alone at head_lr (one batch), then one of the body alone
    model.train()
    w = {n: t.clone().requires_grad_(n.startswith("fc3.")) for n, t in own.items()}
    loss = F.cross_entropy(functional_call(model, {**w, **buffers}, (x,)), y)
    grads = dict(zip(["fc3.weight", "fc3.bias"], torch.autograd.grad(loss, [w["fc3.weight"], w["fc3.bias"]])))
    after_head = {n: (t.detach() - 0.3 * grads[n]) if n in grads else t.detach() for n, t in w.items()}
    body = {n: t.clone().requires_grad_(not n.startswith("fc3.")) for n, t in after_head.items()}
    features = functional_call(model, {**body, **buffers}, (x,), {"features": True})
    logits = F.linear(features, body["fc3.weight"], body["fc3.bias"])
    loss = F.cross_entropy(logits, y) + 0.6 * ((features - target[y]) ** 2).mean()
    names = [n for n in body if not n.startswith("fc3.")]
    grads = dict(zip(names, torch.autograd.grad(loss, [body[n] for n in names])))
    for n, t in body.items():
        want = t.detach() - 0.1 * grads[n] if n in grads else t.detach()
        torch.testing.assert_close(got[n], want, rtol=1e-5, atol=1e-6)


def test_fedpac_server_weights_centroids_by_counts_and_combines_heads_by_its_qp(synthetic_cfg, tmp_path):
    module = setup(synthetic_cfg("algorithm=fedpac", "model=cnn_bn", "federation.rounds=1",
                                 "federation.adapt_every=0"))
    reports = []
    algo = module.algorithm
    original = algo.receive_round
    algo.receive_round = lambda rs: (reports.extend(rs), original(rs))
    run(module.cfg, tmp_path / "pac", module=module)
    counts = torch.stack([r.trained.params[COUNTS].double() for r in reports])
    means = torch.stack([r.trained.params[MEANS].double() for r in reports])
    for c in range(counts.shape[1]):
        if counts[:, c].sum() > 0:
            by_hand = sum(counts[j, c] * means[j, c] for j in range(len(reports))) / counts[:, c].sum()
            torch.testing.assert_close(algo.centroids["centroids"][0][c], by_hand.float())
    v = torch.cat([r.trained.params[V].double() for r in reports])
    h = torch.stack([r.trained.params[H].double() for r in reports])
    for k, r in enumerate(reports):
        weights = combination_weights(v, h, k)
        assert algo.head_weights[r.client, [q.client for q in reports]].tolist() == pytest.approx(weights.tolist())
        head = sum(weights[j] * reports[j].trained.params["fc3.weight"].double() for j in range(len(reports)))
        torch.testing.assert_close(algo.client_params["fc3.weight"][r.client], head.float())
