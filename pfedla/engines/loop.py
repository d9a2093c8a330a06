"""The loop engine (the reference): a round's clients train one after another, each a plain batch loop.

The shared ``model`` is only an architecture: its weights are never used. Parameters and buffers come in as
``{name: Tensor}`` dicts and are applied with ``torch.func.functional_call``, so no Trainer or optimizer object
exists per client (those cost milliseconds per client per round).
"""

from __future__ import annotations

import torch
from torch import nn

from pfedla.compute import REFERENCE, Compute
from pfedla.engines.batches import batch_schedule, epoch_phases
from pfedla.engines.evaluation import predict
from pfedla.engines.objectives import CROSS_ENTROPY, active_objectives, objective_grad, sgd_step, split

Tensors = dict[str, torch.Tensor]
TrainResult = tuple[Tensors, Tensors, torch.Tensor]


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
) -> TrainResult:
    """Train one client starting exactly from ``params``; return (params', buffers', mean loss of the first
    objective). ``epochs`` of every parameter, or ``phases`` ((epochs, names trained or None for all), ...)
    one after another; every batch, each objective of ``steps`` (pfedla/engines/objectives.py; none: the
    cross-entropy) takes its SGD step in order, ``prox_mu`` > 0 adding FedProx's term; ``max_batches`` stops
    after that many batches.

    Inputs are not modified; buffers (BatchNorm running statistics) are updated on copies. Conv weights train
    in ``compute``'s memory format (pfedla/compute.py; the images should already be in it), forward passes run
    at its precision.
    """
    objectives = tuple(steps) or (CROSS_ENTROPY,)
    received = {k: v.detach().clone() for k, v in params.items()}
    params = compute.cloned(params)
    buffers = {k: v.detach().clone() for k, v in buffers.items()}
    velocity = {k: torch.zeros_like(v) for k, v in params.items()} if momentum else {}
    grads_of = [objective_grad(o, model, compute) for o in objectives]
    trained_in = epoch_phases(epochs, phases)
    active = [active_objectives(objectives, grads_of, names, list(params)) for names in trained_in]
    model.train()
    losses = []
    for epoch, batch in batch_schedule(len(y), len(trained_in), batch_size, generator, max_batches):
        batch = batch.to(y.device)
        for k, (objective, grad_of, names) in enumerate(active[epoch]):
            trained, fixed = split(params, names)
            grads, (loss, new_buffers) = grad_of(trained, fixed, received, buffers, x[batch], y[batch])
            sgd_step(params, grads, received, objective, lr=lr, momentum=momentum, weight_decay=weight_decay,
                     velocity=velocity, prox_mu=prox_mu)
            buffers.update(new_buffers)
            if k == 0:
                losses.append(loss)
    return params, buffers, torch.stack(losses).mean()


class LoopEngine:
    """``client.engine=loop``: clients one after another (``train_one`` each: the seam tests observe a client
    through), models scored one at a time."""

    name = "loop"
    channels_last = True  # conv weights may train in the channels_last layout (pfedla/compute.py)

    def __init__(self, model: nn.Module, compute: Compute = REFERENCE, eval_batch_size: int = 256):
        self.model, self.compute, self.eval_batch_size = model, compute, eval_batch_size
        self.train_one = train_client

    def train(self, models: list[tuple[Tensors, Tensors]], data: list[tuple[torch.Tensor, torch.Tensor]],
              generators: list[torch.Generator], progress=lambda done, total: None, **plan_args) -> list[TrainResult]:
        """Each client trains from its (params, buffers) on its (x, y) with its generator; ``plan_args``:
        ``LocalPlan.training_args``."""
        results = []
        for done, ((params, buffers), (x, y), generator) in enumerate(zip(models, data, generators)):
            progress(done, len(models))
            results.append(self.train_one(self.model, params, buffers, x, y, generator=generator,
                                          compute=self.compute, **plan_args))
        return results

    def predict(self, models: list[tuple[Tensors, Tensors]], xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each model's class predictions on its own inputs."""
        return [predict(self.model, p, b, x, self.eval_batch_size, self.compute) for (p, b), x in zip(models, xs)]
