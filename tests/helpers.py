"""Small builders shared by the algorithm tests."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from pfedla.algorithms.pfedla import PFedLA
from pfedla.models.cnn import CNN


def pfedla_cfg(**over):
    base = dict(
        name="pfedla", embedding_dim=8, hidden_dim=8, hidden_layers=3, hn_lr=0.005, hn_momentum=0.0, hn_optimizer="sgd",
        normalisation="relu", head_init="random", grouping="module", k=0, alpha="learned",
    )
    return OmegaConf.create({**base, **over})


def tiny_model(batch_norm: bool = False, seed: int = 0) -> CNN:
    torch.manual_seed(seed)
    return CNN((1, 16, 16), 3, channels=(2, 3), hidden=(5, 4), batch_norm=batch_norm)


def make_pfedla(num_clients: int = 4, dtype=torch.float32, seed: int = 0, **over) -> PFedLA:
    algo = PFedLA(tiny_model(seed=seed), num_clients, pfedla_cfg(**over)).to(dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # distinct client models, as after a few rounds
        for name in algo.client_params.names:
            t = algo.client_params[name]
            t.add_(0.1 * torch.randn(t.shape, generator=gen, dtype=t.dtype))
            if algo.uploaded_params is not None:
                algo.uploaded_params[name].copy_(t)
    return algo


def toy_batch(n: int = 12, seed: int = 0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 16, 16, generator=gen, dtype=dtype), torch.randint(0, 3, (n,), generator=gen)


def assert_states_close(got: dict, expected: dict, rtol: float = 1e-3, atol: float = 1e-4) -> None:
    """Two state dicts from different code paths: floats to a tolerance (they may round differently on
    another CPU), integers (counters, BatchNorm's num_batches_tracked) exactly."""
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        if value.is_floating_point():
            torch.testing.assert_close(got[name], value, rtol=rtol, atol=atol, msg=lambda m, name=name: f"{name}: {m}")
        else:
            assert torch.equal(got[name], value), name


def trained_module(synthetic_cfg, run_dir, *overrides):
    """A FederatedModule after a whole synthetic run with these overrides (its run dir: ``run_dir``)."""
    from pfedla.run import run, setup

    module = setup(synthetic_cfg(*overrides))
    run(module.cfg, run_dir, module=module)
    return module


def assert_same_personalized_models(first, second, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Two trained modules score the same model (a) for every client, to float tolerance."""
    for i in range(first.data.num_clients):
        a, b = first.algorithm.personalized_model(i), second.algorithm.personalized_model(i)
        assert_states_close({**a.params, **a.buffers}, {**b.params, **b.buffers}, rtol=rtol, atol=atol)
