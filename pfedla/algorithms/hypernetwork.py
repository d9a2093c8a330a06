"""pFedLA's per-client hypernetworks, stored stacked so a round's clients run as batched matmuls.

Client i owns an embedding v_i and an MLP psi_i (``hidden_layers`` Linear+ReLU layers) with one
linear head per model layer l giving N scores s_i^l; alpha_i^l = normalise(s_i^l) over the N clients
(pFedLA, Sec. 3.2). Every tensor has a leading client axis; rows of different clients never mix, so
the gradient of a sum over clients is each client's own gradient.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pfedla import optim
from pfedla.errors import ConfigError

NORMALISATIONS = ("relu", "softmax")
HEAD_INITS = ("uniform", "random")
OPTIMIZERS = ("sgd", "adam")


class LayerwiseHypernetworks(nn.Module):
    def __init__(
        self,
        num_clients: int,
        num_layers: int,
        embedding_dim: int,
        hidden_dim: int,
        hidden_layers: int,
        normalisation: str = "relu",
        head_init: str = "uniform",
        lr: float = 5e-3,
        momentum: float = 0.0,
        optimizer: str = "sgd",
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if normalisation not in NORMALISATIONS:
            raise ConfigError(f"algorithm.normalisation={normalisation} is unknown; valid: relu, softmax")
        if optimizer not in OPTIMIZERS:
            raise ConfigError(f"algorithm.hn_optimizer={optimizer} is unknown; valid: sgd, adam")
        if head_init not in HEAD_INITS:
            raise ConfigError(f"algorithm.head_init={head_init} is unknown; valid: uniform, random")
        n = num_clients
        self.num_clients, self.num_layers, self.normalisation = n, num_layers, normalisation
        self.lr, self.momentum, self.optimizer = lr, momentum, optimizer
        # generator: where the initial values come from (None: torch's global RNG)
        self.embeddings = nn.Parameter(torch.randn(n, embedding_dim, generator=generator))  # as nn.Embedding does
        dims = [embedding_dim] + [hidden_dim] * hidden_layers
        pairs = list(zip(dims[:-1], dims[1:]))
        self.body_weights = nn.ParameterList([_linear_init(n, o, i, generator=generator) for i, o in pairs])
        self.body_biases = nn.ParameterList([_linear_init(n, o, i, True, generator) for i, o in pairs])
        self.head_weight = _linear_init(n, num_layers * n, dims[-1], generator=generator)
        self.head_bias = _linear_init(n, num_layers * n, dims[-1], True, generator)
        if head_init == "uniform":
            # Constant equal scores: alpha_i^l = 1/N for every layer at round 1 (a FedAvg-like start).
            # Weights are zero, not the body: the heads still get gradient (outer product with h).
            with torch.no_grad():
                self.head_weight.zero_()
                self.head_bias.fill_(1.0)
        # Optimizer state as buffers (checkpointed); rows are clients, so each client's state is its own.
        for name, p in list(self.named_parameters()):
            if optimizer == "sgd" and momentum:
                self.register_buffer(_state_key("momentum", name), torch.zeros_like(p))
            if optimizer == "adam":
                self.register_buffer(_state_key("exp_avg", name), torch.zeros_like(p))
                self.register_buffer(_state_key("exp_avg_sq", name), torch.zeros_like(p))
        if optimizer == "adam":
            self.register_buffer("adam_steps", torch.zeros(n, dtype=torch.int64))

    def rows(self, clients: torch.Tensor) -> dict[str, torch.Tensor]:
        """Detached leaf copies of the given clients' rows: differentiate w.r.t. these, then ``step``.

        Taking gradients w.r.t. row slices keeps the cost proportional to the round's clients, not N.
        """
        return {name: p[clients].detach().requires_grad_(True) for name, p in self.named_parameters()}

    def alpha(self, clients: torch.Tensor, rows: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """alpha [S, L, N] for the clients [S]; rows of each sum to 1 over the last axis."""
        rows = self.rows(clients) if rows is None else rows
        h = rows["embeddings"]
        for k in range(len(self.body_weights)):
            h = torch.relu(torch.einsum("soi,si->so", rows[f"body_weights.{k}"], h) + rows[f"body_biases.{k}"])
        scores = torch.einsum("soh,sh->so", rows["head_weight"], h) + rows["head_bias"]
        return normalise(scores.view(len(clients), self.num_layers, self.num_clients), clients, self.normalisation)

    @torch.no_grad()
    def step(self, clients: torch.Tensor, grads: dict[str, torch.Tensor | None]) -> None:
        """A descent step (SGD or Adam) on the given clients' rows only."""
        if self.optimizer == "adam":
            self.adam_steps[clients] += 1
            for name, p in self.named_parameters():
                if grads.get(name) is not None:
                    optim.adam(p, grads[name], lr=self.lr, exp_avg=getattr(self, _state_key("exp_avg", name)),
                               exp_avg_sq=getattr(self, _state_key("exp_avg_sq", name)),
                               steps=self.adam_steps[clients], rows=clients)
            return
        for name, p in self.named_parameters():
            if grads.get(name) is not None:
                buffer = getattr(self, _state_key("momentum", name)) if self.momentum else None
                optim.sgd(p, grads[name], lr=self.lr, momentum=self.momentum, velocity=buffer, rows=clients)


def normalise(scores: torch.Tensor, clients: torch.Tensor, how: str) -> torch.Tensor:
    """relu(s)/sum relu(s) over clients; an all-zero row falls back to one-hot on the client itself."""
    if how == "softmax":
        return torch.softmax(scores, dim=-1)
    positive = torch.relu(scores)
    total = positive.sum(-1, keepdim=True)
    own = F.one_hot(clients, scores.shape[-1]).to(scores.dtype)[:, None, :].expand_as(scores)
    return torch.where(total > 0, positive / total.clamp_min(torch.finfo(scores.dtype).tiny), own)


def _state_key(kind: str, name: str) -> str:
    return f"{kind}_" + name.replace(".", "_")


def _linear_init(n: int, out_features: int, in_features: int, bias: bool = False,
                 generator: torch.Generator | None = None) -> nn.Parameter:
    # nn.Linear's default init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), independently for every client.
    bound = 1.0 / math.sqrt(in_features)
    shape = (n, out_features) if bias else (n, out_features, in_features)
    return nn.Parameter(torch.empty(shape).uniform_(-bound, bound, generator=generator))
