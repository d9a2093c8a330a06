"""pFedLA's ablations: aggregation weights fixed instead of learned by the hypernetworks (``algorithm.alpha``).

Each is an [N, L, N] tensor (client i, layer l, peer j; rows sum to 1), the same every round:
- ``uniform``: every layer the plain mean of the N clients' models, 1/N each;
- ``self``: one-hot on the client itself: each client trains its own model alone, which is Local exactly;
- ``similarity``: w_ij = 1 - TV(p_i, p_j), the total variation distance of the clients' train label
  distributions, rows normalised; the same for every layer. The rule a server that knows only label
  histograms would use: what pFedLA's learned alpha must beat to be worth its hypernetworks.
"""

from __future__ import annotations

import torch

FIXED_ALPHAS = ("uniform", "self", "similarity")


def label_similarity(train_counts) -> torch.Tensor:
    """[N, N]: 1 - TV(p_i, p_j) = 1 - (1/2) sum_c |p_i(c) - p_j(c)|, with p_i client i's label distribution."""
    counts = torch.as_tensor(train_counts, dtype=torch.float64)
    p = counts / counts.sum(1, keepdim=True)
    return 1 - 0.5 * (p[:, None, :] - p[None, :, :]).abs().sum(-1)


def fixed_alpha(how: str, num_clients: int, num_layers: int, train_counts=None) -> torch.Tensor:
    """alpha [N, L, N] (float32) of one fixed rule; ``similarity`` needs each client's train label counts."""
    if how == "uniform":
        rows = torch.full((num_clients, num_clients), 1.0 / num_clients, dtype=torch.float64)
    elif how == "self":
        rows = torch.eye(num_clients, dtype=torch.float64)
    elif how == "similarity":
        if train_counts is None:  # before set_label_counts: a placeholder that no round ever uses
            rows = torch.eye(num_clients, dtype=torch.float64)
        else:
            similarity = label_similarity(train_counts)
            rows = similarity / similarity.sum(1, keepdim=True)
    else:
        raise ValueError(f"unknown fixed alpha {how!r}; valid: {', '.join(FIXED_ALPHAS)}")
    return rows[:, None, :].expand(num_clients, num_layers, num_clients).float().contiguous()
