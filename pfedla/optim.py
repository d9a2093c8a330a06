"""One implementation of every weight update: torch.optim's own functional SGD and Adam.

Client SGD (the loop and the vmap engine alike) and the server's per-client hypernetwork steps (pFedLA,
pFedHN) all come through here, and here is ``torch.optim.sgd.sgd`` / ``torch.optim.adam.adam`` on their
single-tensor path, which is what ``torch.optim.SGD`` / ``Adam`` run on a CPU. So "bit for bit like
torch.optim" holds wherever it is claimed, by construction. ``rows`` updates only those rows of a stacked
tensor (a leading client axis): each client's weights and optimizer state stay its own.
"""

from __future__ import annotations

import torch
from torch.optim.adam import adam as _adam
from torch.optim.sgd import sgd as _sgd


@torch.no_grad()
def sgd(param: torch.Tensor, grad: torch.Tensor, *, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
        velocity: torch.Tensor | None = None, rows: torch.Tensor | None = None) -> None:
    """torch.optim.SGD's step (no dampening, no Nesterov) on ``param``, or on ``param[rows]`` with ``grad`` of that
    shape. ``velocity`` (full-size, zeros before the first step) holds the momentum; required when momentum > 0."""
    if momentum and velocity is None:
        raise ValueError("sgd with momentum needs a velocity buffer (zeros before the first step)")
    if rows is None:
        _sgd([param], [grad], [velocity if momentum else None], foreach=False, weight_decay=weight_decay,
             momentum=momentum, lr=lr, dampening=0.0, nesterov=False, maximize=False)
        return
    current, buffer = param[rows], (velocity[rows] if momentum else None)  # copies: rows is a tensor index
    sgd(current, grad, lr=lr, momentum=momentum, weight_decay=weight_decay, velocity=buffer)
    param[rows] = current
    if momentum:
        velocity[rows] = buffer


@torch.no_grad()
def adam(param: torch.Tensor, grad: torch.Tensor, *, lr: float, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
         steps: torch.Tensor, rows: torch.Tensor, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
    """torch.optim.Adam's step on ``param[rows]``; moments are per row, ``steps[S]`` is each row's step number
    *after* this step (1-based). Rows may be at different step numbers, so they step one at a time."""
    for r, row in enumerate(rows.tolist()):
        step = torch.tensor(float(steps[r]) - 1.0)  # torch's adam counts this step itself
        _adam([param[row]], [grad[r]], [exp_avg[row]], [exp_avg_sq[row]], [], [step], foreach=False, amsgrad=False,
              beta1=betas[0], beta2=betas[1], lr=lr, weight_decay=0.0, eps=eps, maximize=False)
