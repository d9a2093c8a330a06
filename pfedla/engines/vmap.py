"""The vmap engine: a round's clients train together with ``torch.func`` (vmap over clients).

Same batches (pfedla/engines/batches.py), same objectives and SGD step (pfedla/engines/objectives.py) as the
loop engine, so the results agree to float tolerance. Unequal client sizes: at every step the clients are
grouped by their batch size there (full batches, each client's last partial batch, or none) and the names
their phase trains, and each group is one vmapped step. No padding ever enters a batch, so BatchNorm
statistics stay exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from pfedla.compute import REFERENCE, Compute
from pfedla.engines.batches import batch_schedule, epoch_phases
from pfedla.engines.objectives import CROSS_ENTROPY, active_objectives, objective_grad, sgd_step, split

Tensors = dict[str, torch.Tensor]
TrainResult = tuple[Tensors, Tensors, torch.Tensor]


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
    """Train every client of ``sent`` (params, buffers) on its ``data`` (x, y): the loop engine's
    ``train_client`` (same arguments) vmapped over clients, one result per client (forward passes at
    ``compute``'s precision; its memory format is the default one here)."""
    objectives = tuple(steps) or (CROSS_ENTROPY,)
    names = list(sent[0][0])
    params = {n: torch.stack([p[n] for p, _ in sent]).detach().clone() for n in names}
    buffers = {n: torch.stack([b[n] for _, b in sent]).detach().clone() for n in sent[0][1]}
    velocity = {n: torch.zeros_like(t) for n, t in params.items()} if momentum else {}
    received = {n: t.clone() for n, t in params.items()}
    trained_in = epoch_phases(epochs, phases)
    schedule = [batch_schedule(len(y), len(trained_in), batch_size, gen, max_batches)
                for (_, y), gen in zip(data, generators)]
    steps_of = [vmap(objective_grad(o, model, compute), randomness="different") for o in objectives]
    active = [active_objectives(objectives, steps_of, in_phase, names) for in_phase in trained_in]
    losses: list[list[torch.Tensor]] = [[] for _ in sent]
    model.train()
    for t in range(max(len(s) for s in schedule)):
        groups: dict[tuple, list[int]] = {}  # (batch size, epoch's phase): the clients that step together
        for c, batches in enumerate(schedule):
            if t < len(batches):
                epoch, batch = batches[t]
                groups.setdefault((len(batch), trained_in[epoch]), []).append(c)
        for members in groups.values():
            rows = torch.tensor(members, device=params[names[0]].device)
            idx = [schedule[c][t][1].to(data[c][1].device) for c in members]
            x = torch.stack([data[c][0][i] for c, i in zip(members, idx)])
            y = torch.stack([data[c][1][i] for c, i in zip(members, idx)])
            for k, (objective, vstep, trained_names) in enumerate(active[schedule[members[0]][t][0]]):
                trained, fixed = split({n: v[rows] for n, v in params.items()}, trained_names)
                sent_rows = {n: v[rows] for n, v in received.items()}
                grads, (loss, new_b) = vstep(trained, fixed, sent_rows, {n: v[rows] for n, v in buffers.items()},
                                             x, y)
                sgd_step(params, grads, sent_rows, objective, lr=lr, momentum=momentum, weight_decay=weight_decay,
                         velocity=velocity, prox_mu=prox_mu, rows=rows)
                with torch.no_grad():
                    for n, value in new_b.items():
                        buffers[n][rows] = value
                if k == 0:
                    for j, c in enumerate(members):
                        losses[c].append(loss[j].detach())
    return [
        ({n: v[c] for n, v in params.items()}, {n: v[c] for n, v in buffers.items()}, torch.stack(losses[c]).mean())
        for c in range(len(sent))
    ]


class VmapEngine:
    """``client.engine=vmap``: a round's clients train together, and are scored in groups of similar test size."""

    name = "vmap"
    channels_last = False  # stacked weights are 5-D, which has no channels_last layout

    def __init__(self, model: nn.Module, compute: Compute = REFERENCE, eval_batch_size: int = 256):
        self.model, self.compute, self.eval_batch_size = model, compute, eval_batch_size

    def train(self, models: list[tuple[Tensors, Tensors]], data: list[tuple[torch.Tensor, torch.Tensor]],
              generators: list[torch.Generator], progress=lambda done, total: None, **plan_args) -> list[TrainResult]:
        """As LoopEngine.train, every client at once (``progress`` is not called: no client finishes early)."""
        return train_clients_vmap(self.model, models, data, generators=generators, compute=self.compute, **plan_args)

    def predict(self, models: list[tuple[Tensors, Tensors]], xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each model's class predictions on its own inputs."""
        return predict_clients_vmap(self.model, models, xs, compute=self.compute)


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
