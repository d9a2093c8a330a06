"""Client state as stacked tensors: ``{name: Tensor[num_clients, *shape]}``.

The client axis is a leading tensor dimension, so aggregation over clients is one ``einsum`` per
tensor and a round's clients are a row selection, never a Python loop over state_dicts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

Tensors = dict[str, torch.Tensor]


@dataclass
class ClientModel:
    """One client's model as plain tensors: trainable parameters and (never mixed) buffers."""

    params: Tensors
    buffers: Tensors


class StackedTensors(nn.Module):
    """Named tensors with a leading client axis, kept as buffers so Lightning checkpoints them."""

    def __init__(self, tensors: Tensors):
        super().__init__()
        self.names = list(tensors)
        for name, value in tensors.items():
            self.register_buffer(tensor_key(name), value)

    @classmethod
    def repeat(cls, template: Tensors, num_clients: int) -> StackedTensors:
        """Every client starts from the same ``template`` tensors."""
        return cls({n: t.detach().unsqueeze(0).repeat(num_clients, *[1] * t.dim()) for n, t in template.items()})

    def __getitem__(self, name: str) -> torch.Tensor:
        return getattr(self, tensor_key(name))

    def as_dict(self) -> Tensors:
        return {n: self[n] for n in self.names}

    def row(self, i: int) -> Tensors:
        return {n: self[n][i] for n in self.names}

    @torch.no_grad()
    def set_row(self, i: int, values: Tensors, names=None) -> None:
        for n in self.names if names is None else names:
            self[n][i].copy_(values[n])


def tensor_key(name: str) -> str:
    # buffer names may not contain "."; PyTorch attribute names never contain "__" mid-name in our models.
    return name.replace(".", "__")


def nbytes(tensors: Tensors, names=None) -> int:
    return sum(tensors[n].numel() * tensors[n].element_size() for n in (tensors if names is None else names))


@torch.no_grad()
def sgd_step(
    param: torch.Tensor,
    grad: torch.Tensor,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    momentum_buffer: torch.Tensor | None = None,
    rows: torch.Tensor | None = None,
) -> None:
    """torch.optim.SGD's update (no dampening, no Nesterov) on ``param``, or only on its ``rows``.

    ``grad`` (and the update) has the shape of ``param[rows]``; the momentum buffer is full-size, so
    with ``rows`` every client's optimizer state stays its own.
    """
    current = param if rows is None else param[rows]
    if weight_decay:
        grad = grad + weight_decay * current
    if momentum:
        if rows is None:
            grad = momentum_buffer.mul_(momentum).add_(grad)
        else:
            momentum_buffer[rows] = momentum * momentum_buffer[rows] + grad
            grad = momentum_buffer[rows]
    if rows is None:
        param.sub_(lr * grad)
    else:
        param[rows] = current - lr * grad


@torch.no_grad()
def adam_step(
    param: torch.Tensor,
    grad: torch.Tensor,
    lr: float,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step_numbers: torch.Tensor,
    rows: torch.Tensor,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> None:
    """torch.optim.Adam's update on ``param[rows]``; moments are per row, ``step_numbers[S]`` (1-based) too."""
    beta1, beta2 = betas
    t = step_numbers.to(param.dtype).view(-1, *[1] * (param.dim() - 1))
    m = exp_avg[rows].lerp(grad, 1 - beta1)
    v = exp_avg_sq[rows].mul(beta2).addcmul(grad, grad, value=1 - beta2)
    exp_avg[rows], exp_avg_sq[rows] = m, v
    denom = (v.sqrt() / (1 - beta2**t).sqrt()).add(eps)
    param[rows] = param[rows] - (lr / (1 - beta1**t)) * m / denom
