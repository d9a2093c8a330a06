"""Vectorised client engine: a round's clients train together with ``torch.func`` (vmap over clients).

Same batches, same SGD arithmetic as ``pfedla.client.train_client`` (the ``loop`` reference), so the
results agree to float tolerance. Unequal client sizes: at every step the clients are grouped by
their batch size there (full batches, each client's last partial batch, or none), and each group is
one vmapped step. No padding ever enters a batch, so BatchNorm statistics stay exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from pfedla import optim
from pfedla.compute import REFERENCE, Compute
from pfedla.local_rules import Tensors, active_objectives, clamp, epoch_phases, objective_grad, split

TrainResult = tuple[Tensors, Tensors, torch.Tensor]


def batch_schedule(sizes: list[int], epochs: int, batch_size: int, generators: list[torch.Generator],
                   max_batches: int | None = None):
    """Per client, the list of index batches the loop engine would draw (same generator calls), each with the
    epoch it belongs to (the first ``max_batches`` of them, if given)."""
    schedule = []
    for n, gen in zip(sizes, generators):
        batches = []
        for epoch in range(epochs):
            order = torch.randperm(n, generator=gen)
            batches += [(epoch, order[s : s + batch_size]) for s in range(0, n, batch_size)]
        schedule.append(batches if max_batches is None else batches[:max_batches])
    return schedule


def train_clients_vmap(
    model: nn.Module,
    sent: list[tuple[Tensors, Tensors]],
    data: list[tuple[torch.Tensor, torch.Tensor]],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    generators: list[torch.Generator],
    compute: Compute = REFERENCE,
    prox_mu: float = 0.0,
    phases=None,
    steps=(),
    max_batches: int | None = None,
) -> list[TrainResult]:
    """Train every client of ``sent`` (params, buffers) on its ``data`` (x, y); one result per client
    (forward passes at ``compute``'s precision; its memory format is the default one here). ``steps``: the
    plan's objectives (pfedla/local_rules.py), vmapped over clients exactly as the loop engine calls them."""
    names = list(sent[0][0])
    params = {n: torch.stack([p[n] for p, _ in sent]).detach().clone() for n in names}
    buffers = {n: torch.stack([b[n] for _, b in sent]).detach().clone() for n in sent[0][1]}
    velocity = {n: torch.zeros_like(t) for n, t in params.items()} if momentum else {}
    anchor = {n: t.clone() for n, t in params.items()} if prox_mu or steps else {}  # as received (FedProx, steps)
    trained_in = epoch_phases(epochs, phases)  # per epoch: the names trained (None: all), as in the loop engine
    schedule = batch_schedule([len(y) for _, y in data], len(trained_in), batch_size, generators, max_batches)
    losses: list[list[torch.Tensor]] = [[] for _ in sent]
    model.train()

    def loss_fn(p, b, x, y):
        b = {k: v.clone() for k, v in b.items()}  # BatchNorm updates these in place
        with compute.autocast(x.device.type):
            logits = functional_call(model, {**p, **b}, (x,))
        loss = F.cross_entropy(logits.float(), y)
        return loss, (loss.detach(), b)

    step = vmap(grad(loss_fn, has_aux=True), randomness="different")  # d loss / d params, per client
    objective_steps = [vmap(objective_grad(o, model, compute), randomness="different") for o in steps]

    for t in range(max(len(s) for s in schedule)):
        groups: dict[tuple, list[int]] = {}  # (batch size, names trained): the clients that step together
        for c, batches in enumerate(schedule):
            if t < len(batches):
                groups.setdefault((len(batches[t][1]), trained_in[batches[t][0]]), []).append(c)
        for (_, names_trained), members in groups.items():
            rows = torch.tensor(members, device=params[names[0]].device)
            idx = [schedule[c][t][1].to(data[c][1].device) for c in members]
            x = torch.stack([data[c][0][i] for c, i in zip(members, idx)])
            y = torch.stack([data[c][1][i] for c, i in zip(members, idx)])
            if steps:  # each objective in order, on these clients' rows, as the loop engine runs them
                for k, (objective, vstep, trained_names) in enumerate(
                        active_objectives(steps, objective_steps, names_trained)):
                    trained, fixed = split({n: v[rows] for n, v in params.items()}, trained_names)
                    received = {n: v[rows] for n, v in anchor.items()}
                    grads, (loss, new_b) = vstep(trained, fixed, received, {n: v[rows] for n, v in buffers.items()},
                                                 x, y)
                    for n, g in grads.items():
                        optim.sgd(params[n], g, lr=lr if objective.lr is None else objective.lr, momentum=momentum,
                                  weight_decay=weight_decay, velocity=velocity.get(n), rows=rows)
                    clamp(params, objective.bounds)  # whole rows: other clients' values are already in bounds
                    with torch.no_grad():
                        for n, value in new_b.items():
                            buffers[n][rows] = value
                    if k == 0:
                        for j, c in enumerate(members):
                            losses[c].append(loss[j].detach())
                continue
            p = {n: v[rows] for n, v in params.items()}
            b = {n: v[rows] for n, v in buffers.items()}
            grads, (loss, new_b) = step(p, b, x, y)
            trained = names if names_trained is None else [n for n in names if n in names_trained]
            for n in trained:  # torch.optim.SGD's own step on these clients' rows (pfedla/optim.py), as in the loop
                g = grads[n].add(p[n] - anchor[n][rows], alpha=prox_mu) if prox_mu else grads[n]
                optim.sgd(params[n], g, lr=lr, momentum=momentum, weight_decay=weight_decay,
                          velocity=velocity.get(n), rows=rows)
            with torch.no_grad():
                for n in buffers:
                    buffers[n][rows] = new_b[n]
            for k, c in enumerate(members):
                losses[c].append(loss[k].detach())
    return [
        ({n: v[c] for n, v in params.items()}, {n: v[c] for n, v in buffers.items()}, torch.stack(losses[c]).mean())
        for c in range(len(sent))
    ]


@torch.no_grad()
def predict_clients_vmap(
    model: nn.Module, models: list[tuple[Tensors, Tensors]], xs: list[torch.Tensor], group: int = 8,
    compute: Compute = REFERENCE,
) -> list[torch.Tensor]:
    """Predictions of every client's model on its own inputs, vmapped over clients (eval mode).

    Clients are taken in groups of similar test size (sorted by size) and zero-padded to the group's
    longest, which bounds the padding; in eval mode samples do not interact, so padding is exact.
    """
    model.eval()
    forward = vmap(lambda p, b, x: functional_call(model, {**p, **b}, (x,)))
    preds: list[torch.Tensor | None] = [None] * len(xs)
    order = sorted(range(len(xs)), key=lambda c: len(xs[c]))
    for start in range(0, len(order), group):
        members = order[start : start + group]
        params = {n: torch.stack([models[c][0][n] for c in members]) for n in models[0][0]}
        buffers = {n: torch.stack([models[c][1][n] for c in members]) for n in models[0][1]}
        longest = max(len(xs[c]) for c in members)
        padded = torch.stack([F.pad(xs[c], (0, 0, 0, 0, 0, 0, 0, longest - len(xs[c]))) for c in members])
        with compute.autocast(padded.device.type):
            logits = forward(params, buffers, padded)
        for k, c in enumerate(members):
            preds[c] = logits[k, : len(xs[c])].argmax(-1)
    return preds
