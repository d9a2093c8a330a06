"""Local training by objectives (``LocalPlan.steps``): the part of the client seam both engines share.

A client's training state is a dict of tensors: the model's parameters, and for methods with several
models per client, more copies under a prefix (Ditto's ``personal/``, APFL's ``local/`` and ``mix/alpha``,
pFedMe's ``personal/``). Each batch runs the plan's objectives in order; each is a loss whose gradient
(``torch.func.grad``) updates its ``names`` by torch.optim's SGD step (pfedla/optim.py). The loop engine
calls the very function built here once per client, the vmap engine vmaps it over a round's clients, so
the two execute the same plan.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad

from pfedla import optim
from pfedla.compute import REFERENCE, Compute

Tensors = dict[str, torch.Tensor]


def epoch_phases(epochs: int, phases=None) -> list:
    """The names trained in each epoch, in order (None: all): ``phases`` spelled out, or ``epochs`` of all."""
    if phases is None:
        return [None] * epochs
    return [names for count, names in phases for _ in range(count)]


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
        return out.float(), {prefix + n: t for n, t in own.items()}

    return forward


def linear(params: Tensors, prefix: str, features: torch.Tensor) -> torch.Tensor:
    """A Linear layer whose ``weight`` and ``bias`` are the tensors named ``prefix`` + those (a head apart from the
    model: FedRoD's personal head), applied to ``features``."""
    return torch.nn.functional.linear(features, params[prefix + "weight"], params[prefix + "bias"])


def cross_entropy(params, received, buffers, x, y, forward):
    """The plain objective: the model's cross-entropy (unprefixed tensors)."""
    logits, new_buffers = forward(params, buffers, x)
    return F.cross_entropy(logits, y), new_buffers


def objective_grad(objective, model: nn.Module, compute: Compute = REFERENCE):
    """``g(trained, fixed, received, buffers, x, y) -> (grads of trained, (loss, buffers'))`` for one Objective."""
    forward = forward_fn(model, compute)

    def loss(trained, fixed, received, buffers, x, y):
        value, new_buffers = objective.loss({**fixed, **trained}, received, buffers, x, y, forward)
        return value, (value.detach(), new_buffers)

    return grad(loss, has_aux=True)


def active_objectives(steps, step_fns, in_phase) -> list[tuple]:
    """(objective, its step function, the names it trains) for a phase training ``in_phase`` (None: every name):
    each objective on its names within the phase's, those with none there left out."""
    out = []
    for objective, fn in zip(steps, step_fns):
        names = objective.names if in_phase is None else objective.names & in_phase
        if names:
            out.append((objective, fn, names))
    return out


def split(params: Tensors, names) -> tuple[Tensors, Tensors]:
    """(the tensors an objective trains, the rest)."""
    return {n: t for n, t in params.items() if n in names}, {n: t for n, t in params.items() if n not in names}


@torch.no_grad()
def clamp(params: Tensors, bounds: dict | None) -> None:
    """An Objective's ``bounds``, in place."""
    for n, (low, high) in (bounds or {}).items():
        params[n].clamp_(low, high)


def train_by_objectives(model, params, buffers, x, y, *, steps, epochs, phases, batch_size, lr, momentum=0.0,
                        weight_decay=0.0, generator=None, compute: Compute = REFERENCE, max_batches=None,
                        ) -> tuple[Tensors, Tensors, torch.Tensor]:
    """The loop engine's execution of ``steps`` (pfedla.client.train_client's arguments): every batch, each
    objective's SGD step in order; the loss reported is the first objective's."""
    received = {k: v.detach().clone() for k, v in params.items()}
    params = compute.cloned(params)
    buffers = {k: v.detach().clone() for k, v in buffers.items()}
    velocity = {k: torch.zeros_like(v) for k, v in params.items()} if momentum else {}
    grads_of = [objective_grad(o, model, compute) for o in steps]
    model.train()
    losses, done = [], 0
    for in_phase in epoch_phases(epochs, phases):
        active = active_objectives(steps, grads_of, in_phase)
        order = torch.randperm(len(y), generator=generator).to(y.device)
        for start in range(0, len(y), batch_size):
            if max_batches is not None and done >= max_batches:
                break
            batch = order[start : start + batch_size]
            for k, (objective, grad_of, names) in enumerate(active):
                trained, fixed = split(params, names)
                grads, (loss, new_buffers) = grad_of(trained, fixed, received, buffers, x[batch], y[batch])
                for n, g in grads.items():
                    optim.sgd(params[n], g, lr=lr if objective.lr is None else objective.lr, momentum=momentum,
                              weight_decay=weight_decay, velocity=velocity.get(n))
                clamp(params, objective.bounds)
                buffers.update(new_buffers)
                if k == 0:
                    losses.append(loss)
            done += 1
    return params, buffers, torch.stack(losses).mean()
