"""The vmap client engine equals the loop reference on the same batches (unequal sizes, BatchNorm)."""

import copy

import pytest
import torch

from pfedla.engines.batches import client_generator
from pfedla.engines.loop import train_client
from pfedla.engines.vmap import train_clients_vmap
from pfedla.run import run, setup
from tests.helpers import assert_states_close, tiny_model

HEAD = frozenset({"fc3.weight", "fc3.bias"})  # tiny_model's classifier


@pytest.mark.parametrize("momentum, weight_decay, prox_mu, phases", [
    (0.0, 0.0, 0.0, None), (0.9, 1e-3, 0.0, None), (0.9, 0.0, 0.5, None),
    (0.9, 0.0, 0.0, ((1, HEAD), (1, None))),  # FedRep-like phases: clients change phase at different steps
])
def test_vmap_engine_matches_loop_engine_with_unequal_sizes_and_batchnorm(momentum, weight_decay, prox_mu, phases):
    model = tiny_model(batch_norm=True)
    gen = torch.Generator().manual_seed(0)
    sizes = [23, 8, 17]  # partial last batches of 3, none, 1... with batch size 5: 5 steps, 2 steps, 4 steps
    data = [(torch.randn(n, 1, 16, 16, generator=gen), torch.randint(0, 3, (n,), generator=gen)) for n in sizes]
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    sent = [({n: p + 0.01 * c for n, p in params.items()}, buffers) for c in range(3)]
    kw = dict(epochs=2, batch_size=5, lr=0.1, momentum=momentum, weight_decay=weight_decay, prox_mu=prox_mu,
              phases=phases)
    looped = [train_client(model, p, b, x, y, generator=client_generator(0, 1, c), **kw)
              for c, ((p, b), (x, y)) in enumerate(zip(sent, data))]
    vmapped = train_clients_vmap(model, sent, data, generators=[client_generator(0, 1, c) for c in range(3)], **kw)
    for c in range(3):
        for part in (0, 1):  # params, buffers
            for name in looped[c][part]:
                torch.testing.assert_close(vmapped[c][part][name], looped[c][part][name], rtol=1e-4, atol=1e-5,
                                           msg=f"client {c} {name}")
        torch.testing.assert_close(vmapped[c][2], looped[c][2], rtol=1e-4, atol=1e-5)


def test_loop_engine_is_torch_optim_sgd_on_an_nn_module_in_float64():
    """An independent reference: the module itself, autograd and torch.optim.SGD, on the engine's batches. In
    float64 the two agree to rounding (1e-12), so nothing on the engine's path may round to float32."""
    model = tiny_model(batch_norm=True).double()
    gen = torch.Generator().manual_seed(5)
    x, y = torch.randn(13, 1, 16, 16, generator=gen, dtype=torch.float64), torch.randint(0, 3, (13,), generator=gen)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    kw = dict(epochs=2, batch_size=5, lr=0.1, momentum=0.9, weight_decay=1e-3)
    got, got_buffers, _ = train_client(model, params, buffers, x, y, generator=client_generator(0, 1, 0), **kw)

    reference = copy.deepcopy(model).train()
    sgd = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    order = client_generator(0, 1, 0)
    for _ in range(2):
        perm = torch.randperm(13, generator=order)
        for start in range(0, 13, 5):
            batch = perm[start : start + 5]
            sgd.zero_grad()
            torch.nn.functional.cross_entropy(reference(x[batch]), y[batch]).backward()
            sgd.step()
    for name, p in reference.named_parameters():
        torch.testing.assert_close(got[name], p.detach(), rtol=0, atol=1e-12, msg=name)
    for name, b in reference.named_buffers():
        torch.testing.assert_close(got_buffers[name], b, rtol=0, atol=1e-12, msg=name)


@pytest.mark.parametrize("algorithm", ["pfedla", "fedbn"])
def test_engines_give_the_same_server_state_after_rounds(synthetic_cfg, tmp_path, algorithm):
    states = {}
    for engine in ("loop", "vmap"):
        cfg = synthetic_cfg(f"algorithm={algorithm}", "model=cnn_bn", "client.batch_size=16", f"client.engine={engine}",
                            "partition.alpha=0.5")
        module = setup(cfg)
        summary = run(cfg, tmp_path / engine, module=module)
        states[engine] = (module.algorithm.state_dict(), summary)
    assert len(set(module.data.train_sizes)) > 1, "the test needs unequal client sizes"
    assert_states_close(states["vmap"][0], states["loop"][0])
    assert states["vmap"][1]["final"]["test/acc_mean"] == pytest.approx(
        states["loop"][1]["final"]["test/acc_mean"], abs=0.02)


def test_vmap_evaluation_predicts_what_each_model_predicts_alone():
    from pfedla.engines.evaluation import predict
    from pfedla.engines.vmap import predict_clients_vmap

    gen = torch.Generator().manual_seed(3)
    model = tiny_model(batch_norm=True)
    base = {n: p.detach() for n, p in model.named_parameters()}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    models = [({n: p + 0.3 * torch.randn(p.shape, generator=gen) for n, p in base.items()}, buffers) for _ in range(11)]
    xs = [torch.randn(n, 1, 16, 16, generator=gen) for n in (5, 40, 1, 17, 3, 9, 33, 2, 8, 21, 6)]
    got = predict_clients_vmap(model, models, xs, group=4)
    model.eval()
    for (p, b), x, pred in zip(models, xs, got):
        # Two code paths may round logits differently; only a near-tie may flip the argmax.
        top2 = torch.func.functional_call(model, {**p, **b}, (x,)).topk(2, dim=1).values
        clear = (top2[:, 0] - top2[:, 1]) > 1e-4
        assert torch.equal(pred[clear], predict(model, p, b, x)[clear])
        assert clear.float().mean() > 0.8, "the test needs mostly clear predictions to mean anything"
