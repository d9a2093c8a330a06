"""Evaluation of one client model held as plain tensors (eval mode: BatchNorm uses the running statistics), a
few hundred samples at a time: predictions, mean loss, the body's features. The loop engine scores with these;
a plan's ``prepare`` and ``finish`` steps (pfedla/algorithms/base.py) read them on either engine."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from pfedla.compute import REFERENCE, Compute

Tensors = dict[str, torch.Tensor]


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
