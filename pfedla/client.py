"""Local training and evaluation of one client model held as plain tensors.

The shared ``model`` is only an architecture: its weights are never used. Parameters and buffers
come in as ``{name: Tensor}`` dicts and are applied with ``torch.func.functional_call``, so no
Trainer or optimizer object exists per client (those cost milliseconds per client per round).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from pfedla import optim
from pfedla.compute import REFERENCE, Compute
from pfedla.local_rules import epoch_phases, train_by_objectives

Tensors = dict[str, torch.Tensor]
# Batch-order streams: a round's local training, and the local adaptation scored at evaluation; a plan's prepare
# step (FedALA's sample of the train split). Others: pfedla/unseen.py 10-12, FedFomo 13, pfedla/datasets 14-15.
STREAM_CLIENT_BATCHES, STREAM_ADAPT_BATCHES, STREAM_PREPARE = 4, 6, 16


def client_generator(seed: int, round_idx: int, client: int, stream: int = STREAM_CLIENT_BATCHES) -> torch.Generator:
    """Batch-order randomness for (seed, round, client): reproducible without saving RNG state."""
    state = np.random.SeedSequence([seed, stream, round_idx, client]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def train_client(
    model: nn.Module,
    params: Tensors,
    buffers: Tensors,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    generator: torch.Generator | None = None,
    compute: Compute = REFERENCE,
    prox_mu: float = 0.0,
    phases=None,
    steps=(),
    max_batches: int | None = None,
) -> tuple[Tensors, Tensors, torch.Tensor]:
    """Run ``epochs`` of minibatch SGD starting exactly from ``params``; return (params', buffers', mean loss).
    ``phases`` ((epochs, names trained or None for all), ...) replaces ``epochs`` with phases run one after
    another (pfedla.algorithms.base.LocalPlan). ``prox_mu`` > 0 adds ``prox_mu``/2 ||w - params||^2 to the
    loss (FedProx): its gradient mu (w - params) joins each step's gradient. ``steps`` (Objectives) replace the
    cross-entropy (pfedla/local_rules.py); ``max_batches`` stops after that many batches.

    Inputs are not modified. Buffers (BatchNorm running statistics) are updated on copies. Conv weights
    train in ``compute``'s memory format (pfedla/compute.py; the images should already be in it), forward
    passes run at its precision.
    """
    if steps:
        return train_by_objectives(model, params, buffers, x, y, steps=steps, epochs=epochs, phases=phases,
                                   batch_size=batch_size, lr=lr, momentum=momentum, weight_decay=weight_decay,
                                   generator=generator, compute=compute, max_batches=max_batches)
    params = {k: v.requires_grad_(True) for k, v in compute.cloned(params).items()}
    buffers = {k: v.detach().clone() for k, v in buffers.items()}
    velocity = {k: torch.zeros_like(v) for k, v in params.items()} if momentum else {}
    anchor = {k: v.detach().clone() for k, v in params.items()} if prox_mu else {}
    model.train()
    losses, done = [], 0
    for trained in epoch_phases(epochs, phases):
        trained = list(params) if trained is None else [n for n in params if n in trained]
        order = torch.randperm(len(y), generator=generator).to(y.device)
        for start in range(0, len(y), batch_size):
            if max_batches is not None and done >= max_batches:
                break
            done += 1
            batch = order[start : start + batch_size]
            with compute.autocast(x.device.type):
                logits = functional_call(model, {**params, **buffers}, (x[batch],))
            loss = F.cross_entropy(logits.float(), y[batch])
            grads = torch.autograd.grad(loss, [params[n] for n in trained])
            for name, g in zip(trained, grads):  # torch.optim.SGD's own step (pfedla/optim.py)
                p = params[name]
                if prox_mu:
                    g = g.add(p.detach() - anchor[name], alpha=prox_mu)
                optim.sgd(p, g, lr=lr, momentum=momentum, weight_decay=weight_decay, velocity=velocity.get(name))
            losses.append(loss.detach())
    return {k: v.detach() for k, v in params.items()}, buffers, torch.stack(losses).mean()


@torch.inference_mode()
def predict(model: nn.Module, params: Tensors, buffers: Tensors, x: torch.Tensor, batch_size: int = 256,
            compute: Compute = REFERENCE) -> torch.Tensor:
    """Class predictions of the model (eval mode: BatchNorm uses the running statistics), ``batch_size``
    samples at a time: on a CPU a few hundred stay in cache where thousands do not (docs/PERFORMANCE.md)."""
    return torch.cat([logits.argmax(1) for _, logits in _logits_in_batches(model, params, buffers, x, batch_size,
                                                                            compute)])


@torch.inference_mode()
def mean_loss(model: nn.Module, params: Tensors, buffers: Tensors, x: torch.Tensor, y: torch.Tensor,
              compute: Compute = REFERENCE, batch_size: int = 256) -> torch.Tensor:
    """The model's mean cross-entropy on (x, y) (eval mode), ``batch_size`` samples at a time."""
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for i, logits in _logits_in_batches(model, params, buffers, x, batch_size, compute):
        total += F.cross_entropy(logits.float(), y[i : i + batch_size], reduction="sum").double()
    return total / max(len(x), 1)


@torch.inference_mode()
def features_of(model: nn.Module, params: Tensors, buffers: Tensors, x: torch.Tensor, batch_size: int = 256,
                compute: Compute = REFERENCE) -> torch.Tensor:
    """The body's output for ``x`` (eval mode; pfedla/models/contract.py), in float32; tensors of ``params`` the
    model does not have (a plan's extra state) are left out."""
    names = {n for n, _ in model.named_parameters()}
    own = {n: t for n, t in params.items() if n in names}
    return torch.cat([out.float() for _, out in _logits_in_batches(model, own, buffers, x, batch_size, compute,
                                                                    features=True)])


def _logits_in_batches(model: nn.Module, params: Tensors, buffers: Tensors, x: torch.Tensor, batch_size: int,
                       compute: Compute, features: bool = False):
    """(start, logits) of each ``batch_size`` slice of x, in eval mode, in ``compute``'s layout and autocast
    (``features``: the body's output instead)."""
    model.eval()
    state = {**{k: compute.laid_out(v) for k, v in params.items()}, **buffers}
    for i in range(0, len(x), batch_size):
        with compute.autocast(x.device.type):
            logits = functional_call(model, state, (x[i : i + batch_size],), {"features": True} if features else None)
        yield i, logits
