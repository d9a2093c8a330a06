"""A client's local work as data (``Objective``), and the one SGD step both engines take with it.

A client's training state is a dict of tensors: the model's parameters, and for methods with several
models per client, more copies under a prefix (Ditto's ``personal/``, APFL's ``local/`` and ``mix/alpha``,
pFedMe's ``personal/``). Each batch runs the plan's objectives in order (a plan without any runs
``CROSS_ENTROPY``, on every parameter); each is a loss whose gradient (``torch.func.grad``) updates its
``names`` by torch.optim's SGD step (pfedla/optim.py). The loop engine calls the very function built here
once per client, the vmap engine vmaps it over a round's clients, so the two execute the same plan.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad

from pfedla import optim
from pfedla.compute import REFERENCE, Compute

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Objective:
    """One update of a client's training state on a batch: SGD (client.* momentum and weight decay, lr ``lr`` or
    client.lr) on the parameters ``names`` (None: every parameter of the model), by the gradient of ``loss``.

    ``loss(params, received, buffers, x, y, forward) -> (loss, buffers')``: ``params`` every tensor of the state
    (the prefixed copies of multi-model methods included), ``received`` the state as the client received it
    this round (constants), ``forward(params, buffers, x, prefix="", features=False)`` the model with the
    tensors named ``prefix`` + its names, returning (logits, or the body's output with ``features``; those
    buffers updated). The loss must be a function of the ``names`` only through ``params``; anything else it
    reads is a constant (``.detach()``). ``bounds`` ({name: (low, high)}) clamps those tensors after each step
    (APFL's mixing weight stays in [0, 1])."""

    loss: Callable
    names: frozenset[str] | None = None
    lr: float | None = None
    bounds: dict | None = None


def forward_fn(model: nn.Module, compute: Compute = REFERENCE):
    """``forward(params, buffers, x, prefix="", features=False) -> (logits, buffers')``: ``model`` with the tensors
    named ``prefix`` + its names (train mode: BatchNorm updates copies of its statistics, returned under the same
    names); ``features=True``: the body's output instead of the logits (pfedla/models/contract.py)."""
    param_names = [n for n, _ in model.named_parameters()]
    buffer_names = [n for n, _ in model.named_buffers()]

    def forward(params: Tensors, buffers: Tensors, x: torch.Tensor, prefix: str = "", features: bool = False):
        state = {n: params[prefix + n] for n in param_names}
        own = {n: buffers[prefix + n].clone() for n in buffer_names}
        with compute.autocast(x.device.type):
            out = functional_call(model, {**state, **own}, (x,), {"features": True} if features else None)
        # bf16 autocast's logits up to float32 for the loss; float64 ones stay float64
        return out.to(torch.promote_types(out.dtype, torch.float32)), {prefix + n: t for n, t in own.items()}

    return forward


def linear(params: Tensors, prefix: str, features: torch.Tensor) -> torch.Tensor:
    """A Linear layer whose ``weight`` and ``bias`` are the tensors named ``prefix`` + those (a head apart from the
    model: FedRoD's personal head), applied to ``features``."""
    return torch.nn.functional.linear(features, params[prefix + "weight"], params[prefix + "bias"])


def cross_entropy(params, received, buffers, x, y, forward):
    """The plain objective: the model's cross-entropy (unprefixed tensors)."""
    logits, new_buffers = forward(params, buffers, x)
    return F.cross_entropy(logits, y), new_buffers


CROSS_ENTROPY = Objective(cross_entropy)  # what a client trains by when its plan names no objective


def objective_grad(objective: Objective, model: nn.Module, compute: Compute = REFERENCE):
    """``g(trained, fixed, received, buffers, x, y) -> (grads of trained, (loss, buffers'))`` for one Objective."""
    forward = forward_fn(model, compute)

    def loss(trained, fixed, received, buffers, x, y):
        value, new_buffers = objective.loss({**fixed, **trained}, received, buffers, x, y, forward)
        return value, (value.detach(), new_buffers)

    return grad(loss, has_aux=True)


def active_objectives(objectives, step_fns, in_phase, every_name) -> list[tuple]:
    """(objective, its step function, the names it trains) for a phase training ``in_phase`` (None: every name):
    each objective on its names (None: ``every_name``) within the phase's, those with none there left out."""
    out = []
    for objective, fn in zip(objectives, step_fns):
        names = frozenset(every_name) if objective.names is None else objective.names
        if in_phase is not None:
            names = names & in_phase
        if names:
            out.append((objective, fn, names))
    return out


def split(params: Tensors, names) -> tuple[Tensors, Tensors]:
    """(the tensors an objective trains, the rest)."""
    return {n: t for n, t in params.items() if n in names}, {n: t for n, t in params.items() if n not in names}


@torch.no_grad()
def sgd_step(params: Tensors, grads: Tensors, received: Tensors, objective: Objective, *, lr: float, momentum: float,
             weight_decay: float, velocity: Tensors, prox_mu: float = 0.0, rows: torch.Tensor | None = None) -> None:
    """torch.optim.SGD's step on each tensor of ``grads`` (``rows`` of stacked tensors: the vmap engine), in place,
    at the objective's lr (else ``lr``); ``prox_mu`` > 0 adds FedProx's mu (w - w_received) to each gradient, the
    gradient of mu/2 ||w - w_received||^2; then the objective's ``bounds``."""
    for n, g in grads.items():
        if prox_mu:
            current = params[n] if rows is None else params[n][rows]
            g = g.add(current - received[n], alpha=prox_mu)
        optim.sgd(params[n], g, lr=lr if objective.lr is None else objective.lr, momentum=momentum,
                  weight_decay=weight_decay, velocity=velocity.get(n), rows=rows)
    for n, (low, high) in (objective.bounds or {}).items():  # whole rows: other clients' values are in bounds
        params[n].clamp_(low, high)
