"""FedAvg, FedBN, pFedHN and Local against hand-built cases and plain PyTorch."""

import pytest
import torch
import torch.nn.functional as F

from pfedla.algorithms.base import RoundContext
from pfedla.algorithms.fedavg import FedAvg, FedBN, Local
from pfedla.algorithms.pfedhn import PFedHN
from pfedla.algorithms.stacked import ClientModel
from pfedla.engines.batches import client_generator
from pfedla.errors import ConfigError
from pfedla.models import build_model
from pfedla.run import run, setup
from tests.helpers import tiny_model


def test_fedavg_with_one_client_equals_plain_local_sgd(synthetic_cfg, tmp_path):
    # contiguous images and weights, as the plain module below: the very same ops, so the same bits on any CPU
    # (the channels_last fast path runs other convolution kernels: equal only to float tolerance)
    cfg = synthetic_cfg(
        "algorithm=fedavg", "federation.num_clients=1", "federation.rounds=2", "client.weight_decay=1e-3",
        "trainer.memory_format=contiguous",
    )
    module = setup(cfg)
    run(cfg, tmp_path, module=module)

    # Plain PyTorch: nn.Module + torch.optim.SGD (a fresh optimizer per round, as a client starts anew),
    # the same initial weights and the same batch order.
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, module.data.input_shape, module.data.num_classes)
    x, y = module.data.train_x[0], module.data.train_y[0]
    for round_idx in (1, 2):
        opt = torch.optim.SGD(model.parameters(), lr=cfg.client.lr, momentum=cfg.client.momentum, weight_decay=1e-3)
        order = torch.randperm(len(y), generator=client_generator(cfg.seed, round_idx, 0))
        for start in range(0, len(y), cfg.client.batch_size):
            batch = order[start : start + cfg.client.batch_size]
            opt.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            opt.step()
    for name, p in model.named_parameters():
        assert torch.equal(module.algorithm.global_model[name][0], p.detach()), name


def test_fedavg_average_is_sample_weighted():
    algo = FedAvg(tiny_model(), 2)
    algo.begin_round(RoundContext(1, [0, 1]))
    sent = {i: algo.model_for(i) for i in (0, 1)}
    for i, (value, samples) in {0: (1.0, 1), 1: (4.0, 3)}.items():
        trained = ClientModel({n: torch.full_like(t, value) for n, t in sent[i].params.items()}, {})
        algo.receive(i, sent[i], trained, samples)
    algo.end_round()
    for name in algo.param_names:
        assert torch.allclose(algo.global_model[name][0], torch.tensor(3.25))  # (1*1 + 3*4) / 4
        assert torch.equal(algo.personalized_model(1).params[name], algo.personalized_model(0).params[name])


def test_fedbn_shares_everything_but_batchnorm(synthetic_cfg, tmp_path):
    cfg = synthetic_cfg("algorithm=fedbn", "model=cnn_bn", "federation.rounds=2")
    module = setup(cfg)
    run(cfg, tmp_path, module=module)
    algo = module.algorithm
    a, b = algo.personalized_model(0), algo.personalized_model(1)
    state_a, state_b = {**a.params, **a.buffers}, {**b.params, **b.buffers}
    bn = {n for n in state_a if n.startswith(("bn1.", "bn2."))}
    assert bn == set(algo.personal_names(module.model)) and len(bn) == 10
    for name in state_a:
        if name in bn:
            if "num_batches" not in name:
                assert not torch.equal(state_a[name], state_b[name]), f"{name} should be personal"
        else:
            assert torch.equal(state_a[name], state_b[name]), f"{name} should be shared"


def test_fedbn_without_batchnorm_is_a_clear_error(synthetic_cfg, tmp_path):
    with pytest.raises(ConfigError, match="algorithm=fedbn needs a model with BatchNorm.*model=cnn_bn"):
        run(synthetic_cfg("algorithm=fedbn"), tmp_path)


def test_pfedhn_step_moves_generated_model_toward_trained_model():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(dict(embedding_dim=None, hidden_dim=16, hidden_layers=2, hn_lr=1e-3, hn_momentum=0.0,
                                hn_weight_decay=0.0))
    algo = PFedHN(tiny_model().double(), 3, cfg).double()
    gen = torch.Generator().manual_seed(0)
    algo.begin_round(RoundContext(1, [0, 2]))
    sent = {i: algo.model_for(i) for i in (0, 2)}
    noise = lambda t: 0.1 * torch.randn(t.shape, generator=gen, dtype=t.dtype)
    trained = {i: ClientModel({n: t + noise(t) for n, t in s.params.items()}, {}) for i, s in sent.items()}
    for i in (0, 2):
        algo.receive(i, sent[i], trained[i], 5)
    algo.end_round()

    def dist(a, b):
        return sum(((a[n] - b[n]) ** 2).sum().item() for n in a)

    for i in (0, 2):
        after = algo.personalized_model(i).params
        assert dist(after, trained[i].params) < dist(sent[i].params, trained[i].params)


def test_local_communicates_nothing_and_clients_only_see_their_own_model(synthetic_cfg, tmp_path):
    cfg = synthetic_cfg("algorithm=local", "federation.rounds=2")
    module = setup(cfg)
    real, starts = module.engine.train_one, []

    def spy(model, params, buffers, x, y, **kw):
        out = real(model, params, buffers, x, y, **kw)
        starts.append(({n: p.clone() for n, p in params.items()}, out[0]))
        return out

    module.engine.train_one = spy
    summary = run(cfg, tmp_path, module=module)
    assert summary["bytes_down"] == summary["bytes_up"] == 0
    for i in range(4):  # round 2 starts from exactly what client i itself produced in round 1
        start_round2, (_, trained_round1) = starts[4 + i][0], starts[i]
        assert all(torch.equal(start_round2[n], trained_round1[n]) for n in start_round2)


def test_every_algorithm_sees_the_same_sampled_clients_for_a_seed(synthetic_cfg, tmp_path):
    def sampled(algorithm, seed, *extra):
        cfg = synthetic_cfg(f"algorithm={algorithm}", f"seed={seed}", "federation.num_clients=6",
                            "federation.participation=0.5", "federation.rounds=3", *extra)
        module = setup(cfg)
        seen, begin = [], module.algorithm.begin_round
        module.algorithm.begin_round = lambda ctx: (seen.append(list(ctx.sampled)), begin(ctx))
        run(cfg, tmp_path / f"{algorithm}{seed}", module=module)
        return seen

    reference = sampled("pfedla", 0)
    assert len(reference) == 3 and all(len(r) == 3 for r in reference)
    assert len({tuple(r) for r in reference}) > 1, "the stream should vary across rounds"
    for algorithm, extra in (("fedavg", ()), ("local", ()), ("pfedhn", ()), ("fedbn", ("model=cnn_bn",))):
        assert sampled(algorithm, 0, *extra) == reference, algorithm
    assert sampled("fedavg", 1) != reference


def test_local_and_fedbn_are_fedavg_with_personal_tensors():
    model = tiny_model(batch_norm=True)
    assert set(Local(model, 2).shared_names) == set()
    assert set(FedAvg(model, 2).shared_names) == {n for n, _ in [*model.named_parameters(), *model.named_buffers()]}
    batch_norm = {n for n, _ in [*model.named_parameters(), *model.named_buffers()] if n.startswith("bn")}
    assert len(batch_norm) == 10 and set(FedBN(model, 2).personal_names(model)) == batch_norm


@pytest.mark.parametrize("max_norm", [None, 0.05])
def test_pfedhn_round_applies_the_sum_of_each_clients_clipped_gradient(max_norm):
    import copy

    from omegaconf import OmegaConf

    cfg = OmegaConf.create(dict(embedding_dim=None, hidden_dim=16, hidden_layers=2, hn_lr=0.1, hn_momentum=0.0,
                                hn_weight_decay=0.0, hn_max_grad_norm=max_norm))
    algo = PFedHN(tiny_model().double(), 3, cfg).double()
    before = copy.deepcopy(algo)
    gen = torch.Generator().manual_seed(1)
    algo.begin_round(RoundContext(1, [0, 2]))
    sent = {i: algo.model_for(i) for i in (0, 2)}
    trained = {i: ClientModel({n: t + torch.randn(t.shape, generator=gen, dtype=t.dtype) * (1 + i)
                               for n, t in s.params.items()}, {}) for i, s in sent.items()}
    for i in (0, 2):
        algo.receive(i, sent[i], trained[i], 5)
    algo.end_round()

    # Independent: one client at a time, loss.backward() and torch's own clip_grad_norm_, then the sum.
    expected = {n: p.detach().clone() for n, p in before.named_parameters()}
    norms = []
    for i in (0, 2):
        net = copy.deepcopy(before)
        generated = net.generate(torch.tensor([i]))
        loss = sum((generated[n][0] * (sent[i].params[n] - trained[i].params[n])).sum() for n in generated)
        loss.backward()
        params = [p for p in net.parameters() if p.grad is not None]
        norms.append(float(torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm else float("inf"))))
        for n, p in net.named_parameters():
            if p.grad is not None:
                expected[n] -= 0.1 * p.grad
    if max_norm is not None:
        assert all(n > max_norm for n in norms), "the test needs clipping to bind for both clients"
    for n, p in algo.named_parameters():
        torch.testing.assert_close(p.detach(), expected[n], rtol=1e-9, atol=1e-12, msg=n)


def test_fedper_and_lgfedavg_split_the_model_at_the_head():
    from omegaconf import OmegaConf

    from pfedla.algorithms.fedavg import FedPer, LGFedAvg

    model = tiny_model(batch_norm=True)
    every = {n for n, _ in [*model.named_parameters(), *model.named_buffers()]}
    head = {"fc3.weight", "fc3.bias"}  # tiny_model's last layer
    one = OmegaConf.create({"name": "fedper", "head_layers": 1})
    assert set(FedPer(model, 2, one).personal_names(model)) == head
    assert set(LGFedAvg(model, 2, one).personal_names(model)) == every - head
    with pytest.raises(ConfigError, match="algorithm.head_layers=99"):
        FedPer(model, 2, OmegaConf.create({"name": "fedper", "head_layers": 99}))


def _state(module):
    return {k: v.clone() for k, v in module.algorithm.state_dict().items() if k.startswith("client_")}


@pytest.mark.parametrize("method, reduces_to", [("fedper", "fedavg"), ("lgfedavg", "local")])
def test_nothing_personal_fedper_is_fedavg_and_everything_personal_lgfedavg_is_local(
        synthetic_cfg, tmp_path, method, reduces_to):
    # head_layers=0: FedPer keeps nothing personal (FedAvg), LG-FedAvg keeps everything (Local); same ops, same bits
    runs = {}
    for name, extra in ((method, ["algorithm.head_layers=0"]), (reduces_to, [])):
        module = setup(synthetic_cfg(f"algorithm={name}", "model=cnn_bn", "federation.adapt_every=0", *extra))
        summary = run(module.cfg, tmp_path / name, module=module)
        runs[name] = (summary, _state(module))
    assert runs[method][0]["final"] == runs[reduces_to][0]["final"]
    a, b = runs[method][1], runs[reduces_to][1]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fedper_keeps_its_head_personal_and_lgfedavg_its_body(synthetic_cfg, tmp_path):
    cases = (("fedper", "fc3.weight", "conv1.weight"), ("lgfedavg", "conv1.weight", "fc3.weight"))
    for method, personal, shared in cases:
        module = setup(synthetic_cfg(f"algorithm={method}", "federation.rounds=1", "federation.adapt_every=0"))
        run(module.cfg, tmp_path / method, module=module)
        algo = module.algorithm
        rows = algo.client_params[personal]
        assert not torch.equal(rows[0], rows[1]), f"{method}: {personal} should differ between clients"
        sent = [algo.personalized_model(i).params[shared] for i in range(2)]
        assert torch.equal(sent[0], sent[1]) and shared in algo.shared_names
        head = {"fc3.weight", "fc3.bias"}  # head_layers=1: the last layer
        everything = set(algo.param_names) | set(algo.buffer_names)
        assert set(algo.shared_names) == (everything - head if method == "fedper" else head)
        tensors = {**algo.client_params.as_dict(), **algo.client_buffers.as_dict()}
        shared_bytes = sum(tensors[n][0].numel() * tensors[n].element_size() for n in algo.shared_names)
        assert int(algo.bytes_down) == 4 * shared_bytes  # 4 clients, 1 round: the shared tensors alone go down


def test_fedprox_step_adds_mu_times_the_distance_to_the_received_model():
    # Reference: an nn.Module whose loss carries mu/2 ||w - w_received||^2, torch.optim.SGD, the same batches.
    import copy

    from pfedla.engines.loop import train_client
    from tests.helpers import toy_batch

    model, mu, lr = tiny_model(), 0.5, 0.1
    x, y = toy_batch(12)
    received = {n: p.detach().clone() for n, p in model.named_parameters()}
    got, _, _ = train_client(model, received, {}, x, y, epochs=2, batch_size=4, lr=lr, prox_mu=mu,
                             generator=torch.Generator().manual_seed(5))
    reference = copy.deepcopy(model)
    opt = torch.optim.SGD(reference.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(5)
    for _ in range(2):
        order = torch.randperm(12, generator=gen)
        for start in range(0, 12, 4):
            batch = order[start:start + 4]
            opt.zero_grad()
            prox = sum(((p - received[n]) ** 2).sum() for n, p in reference.named_parameters())
            (F.cross_entropy(reference(x[batch]), y[batch]) + mu / 2 * prox).backward()
            opt.step()
    for n, p in reference.named_parameters():
        torch.testing.assert_close(got[n], p.detach(), rtol=1e-5, atol=1e-6)
    plain, _, _ = train_client(model, received, {}, x, y, epochs=2, batch_size=4, lr=lr,
                               generator=torch.Generator().manual_seed(5))
    assert not torch.allclose(plain["fc3.weight"], got["fc3.weight"])  # the term does change the result


def test_fedprox_with_mu_zero_is_fedavg(synthetic_cfg, tmp_path):
    runs = {}
    for name, extra in (("fedprox", ["algorithm.mu=0"]), ("fedavg", [])):
        module = setup(synthetic_cfg(f"algorithm={name}", *extra))
        runs[name] = (run(module.cfg, tmp_path / name, module=module), _state(module))
    assert runs["fedprox"][0]["final"] == runs["fedavg"][0]["final"]
    assert runs["fedprox"][0]["final_adapted"] == runs["fedavg"][0]["final_adapted"]
    a, b = runs["fedprox"][1], runs["fedavg"][1]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fedrep_phases_train_only_the_head_then_only_the_body():
    from pfedla.engines.loop import train_client
    from tests.helpers import toy_batch

    model = tiny_model()
    x, y = toy_batch(12)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    head = frozenset({"fc3.weight", "fc3.bias"})
    body = frozenset(start) - head
    kw = dict(batch_size=4, lr=0.1, epochs=0)

    def phase(params, names, gen):
        return train_client(model, params, {}, x, y, phases=((1, names),), generator=gen, **kw)[0]

    gen = torch.Generator().manual_seed(3)
    after_head = phase(start, head, gen)
    assert all(torch.equal(after_head[n], start[n]) for n in body)
    assert all(not torch.equal(after_head[n], start[n]) for n in head)
    after_body = phase(after_head, body, gen)
    assert all(torch.equal(after_body[n], after_head[n]) for n in head)
    assert all(not torch.equal(after_body[n], after_head[n]) for n in body)
    # one call with both phases = the two phases in turn (one batch-order stream through both)
    both = train_client(model, start, {}, x, y, phases=((1, head), (1, body)),
                        generator=torch.Generator().manual_seed(3), **kw)[0]
    assert all(torch.equal(both[n], after_body[n]) for n in start)


def test_fedrep_keeps_its_head_personal_and_plans_head_then_body(synthetic_cfg, tmp_path):
    module = setup(synthetic_cfg("algorithm=fedrep", "algorithm.head_epochs=2", "federation.rounds=1",
                                 "federation.adapt_every=0"))
    algo = module.algorithm
    plan = algo.local_plan(module.cfg.client.epochs)
    head = frozenset({"fc3.weight", "fc3.bias"})
    assert plan.phases == ((2, head), (1, frozenset(algo.param_names) - head))
    run(module.cfg, tmp_path, module=module)
    assert not torch.equal(algo.client_params["fc3.weight"][0], algo.client_params["fc3.weight"][1])
    assert "fc3.weight" not in algo.shared_names and "conv1.weight" in algo.shared_names
