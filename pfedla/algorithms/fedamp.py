"""FedAMP (Huang et al., "Personalized Cross-Silo Federated Learning on Non-IID Data", AAAI 2021).

Attentive message passing. Every client keeps its own model w_i. Each round the server builds, for every
sampled client, a cloud model from the models it holds:

    u_i = sum_j xi_ij w_j,   xi_ij = alpha_k A'(||w_i - w_j||^2) (j != i),   xi_ii = 1 - sum_{j != i} xi_ij,

where A(x) = 1 - exp(-x / sigma), so A'(x) = exp(-x / sigma) / sigma. This is one gradient step of size
alpha_k on the attention term sum_{i<j} A(||w_i - w_j||^2) (the paper's U = W - alpha_k grad A(W)). A
peer whose model is close gets more weight. The self-weight is whatever is left, and can be negative
when alpha_k / sigma is large; nothing clips it, as in the paper.

The client then trains its own model w_i (not u_i) on its cross-entropy plus lam / (2 alpha_k)
||w - u_i||^2 (client.*), and uploads it. The prox term carries a gradient. PFLlib's clientamp.py after
commit 45ae9f5 builds it from detached tensors, so there FedAMP trains as Local (its issue #95).

Choices the paper leaves open, taken from the reimplementations (PFLlib serveramp.py, fluke's fedamp.py,
Fling's fedamp_group.py):
- Distances and cloud models are over the parameters; BatchNorm statistics stay each client's own.
- The weights are computed in float64, so exp(-d / sigma) underflows late.
- The server mixes every client's latest uploaded model, stale ones included. With full participation
  this is the paper's cross-silo setting.

Scores: (a) is w_i, the client's own model after its last local training (as PFLlib and Fling score it).
(b) is w_i after plain local SGD (client.*). A new client (pfedla/unseen.py), for each of its local
rounds, gets its cloud model among the trained clients' models and its own (the initial one at first),
and trains from it by plain local SGD: the recipe's local training has no pull term, so it starts from
u_i instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import MISSING
from torch import nn

from pfedla.algorithms.base import Algorithm, LocalPlan, Objective, Options, Report, RoundContext, options
from pfedla.algorithms.stacked import ClientModel, nbytes
from pfedla.errors import check

CLOUD = "cloud/"  # the cloud model u_i in a client's training state


@options("schema_fedamp")
@dataclass
class FedAMPOptions(Options):
    alpha_k: float = MISSING  # the server's step on the attention term (weight of a peer: alpha_k A'(d))
    sigma: float = MISSING  # the scale of A(x) = 1 - exp(-x / sigma)
    lam: float = MISSING  # the attention term's weight: the client's pull lam / (2 alpha_k) ||w - u_i||^2


def attention_weights(distances: torch.Tensor, alpha_k: float, sigma: float) -> torch.Tensor:
    """xi [R, n] from squared distances [R, n] of each row's client to the n models, ``self_column[r]`` the
    row's own column marked by a distance of NaN: peers alpha_k exp(-d / sigma) / sigma, self 1 - their sum."""
    own = distances.isnan()
    weights = alpha_k * torch.exp(-distances.nan_to_num(0.0) / sigma) / sigma
    weights = torch.where(own, torch.zeros_like(weights), weights)
    return torch.where(own, 1 - weights.sum(-1, keepdim=True), weights)


def prox_loss(lam_over_alpha: float, names: list[str]):
    """The local objective: cross-entropy + lam / (2 alpha_k) ||w - u||^2 (u from the state received)."""

    def loss(params, received, buffers, x, y, forward):
        logits, new_buffers = forward(params, buffers, x)
        pull = sum(((params[n] - received[CLOUD + n]) ** 2).sum() for n in names)
        return F.cross_entropy(logits, y) + lam_over_alpha / 2 * pull, new_buffers

    return loss


class FedAMP(Algorithm):
    @staticmethod
    def check_config(cfg) -> None:
        check(cfg.alpha_k > 0, "algorithm.alpha_k", cfg.alpha_k, "must be > 0 (the server's step)", "0.01")
        check(cfg.sigma > 0, "algorithm.sigma", cfg.sigma, "must be > 0 (the scale of A)", "1.0")
        check(cfg.lam >= 0, "algorithm.lam", cfg.lam, "must be >= 0 (0: each client trains as Local)", "0.001")

    def __init__(self, model: nn.Module, num_clients: int, cfg):
        super().__init__(model, num_clients)  # client_params/buffers: each client's own model w_i
        self.alpha_k, self.sigma, self.lam = float(cfg.alpha_k), float(cfg.sigma), float(cfg.lam)
        self.register_buffer("self_weight", torch.ones(num_clients, dtype=torch.float64))  # xi_ii, last round

    def cloud_models(self, own: list[dict], pool: dict[str, torch.Tensor], columns: list[int]
                     ) -> tuple[list[dict], torch.Tensor]:
        """(u for each model of ``own``, xi [R, n]): ``pool`` {name: [n, ...]} the models mixed, ``columns[r]``
        the column of row r's own model in it."""
        flat = torch.cat([pool[n].double().flatten(1) for n in self.param_names], 1)  # [n, D]
        mine = torch.stack([torch.cat([m[n].double().flatten() for n in self.param_names]) for m in own])
        distances = torch.cdist(mine, flat).square()  # squared L2, [R, n]
        distances[torch.arange(len(own)), torch.tensor(columns)] = float("nan")
        xi = attention_weights(distances, self.alpha_k, self.sigma)
        clouds = [{n: torch.einsum("j,j...->...", row, pool[n].double()).to(pool[n].dtype) for n in self.param_names}
                  for row in xi]
        return clouds, xi

    def begin_round(self, ctx: RoundContext) -> None:
        sampled = ctx.sampled
        pool = self.client_params.as_dict()
        self._clouds, xi = self.cloud_models([self.client_params.row(i) for i in sampled], pool, sampled)
        self._cloud = dict(zip(sampled, self._clouds))
        with torch.no_grad():
            self.self_weight[sampled] = xi[torch.arange(len(sampled)), sampled].to(self.self_weight.dtype)
        del self._clouds

    def model_for(self, i: int) -> ClientModel:
        own = self.own_model(i)  # lives on the client: not counted, not sent down (held); it goes up trained
        cloud = {CLOUD + n: t for n, t in self._cloud[i].items()}
        self.count_bytes(down=nbytes(cloud))
        # its parameters go up trained (the server builds the cloud models from them); its BatchNorm statistics,
        # which no cloud model holds, stay on it
        return ClientModel({**own.params, **cloud}, own.buffers, frozenset(own.buffers), held=frozenset(own.params))

    def personalized_model(self, i: int) -> ClientModel:
        return self.own_model(i).all_kept()  # the client's own: scored where it is

    def receive_round(self, reports: list[Report]) -> None:
        for r in reports:
            params = {n: r.trained.params[n] for n in self.param_names}
            self.client_params.set_row(r.client, params)
            self.client_buffers.set_row(r.client, r.trained.buffers)
            self.count_bytes(up=nbytes(params))
        del self._cloud

    def local_plan(self, epochs: int) -> LocalPlan:
        return LocalPlan.epochs(epochs, steps=(Objective(prox_loss(self.lam / self.alpha_k, self.param_names),
                                                         frozenset(self.param_names)),))

    def adapt_plan(self, epochs: int) -> LocalPlan:
        return LocalPlan.epochs(epochs)

    def round_metrics(self) -> dict[str, float]:
        """The mean self-weight xi_ii of the clients' last cloud models (below 0: extrapolated, not mixed)."""
        return {"fedamp/self_weight": float(self.self_weight.mean())}

    def summary_fields(self, class_counts, groups=None) -> dict:
        return {"fedamp_self_weight": self.self_weight.tolist()}

    @torch.no_grad()
    def personalize_new_client(self, initial: ClientModel, fit, rounds: int, generator: torch.Generator
                               ) -> ClientModel:
        """Each local round: the new client's cloud model among the trained clients' models and its own, and its
        local training (``fit``: plain SGD, so without the pull) from that cloud model."""
        trained = self.client_params.as_dict()
        model = initial
        for r in range(1, rounds + 1):
            pool = {n: torch.cat([t, model.params[n][None].to(t.dtype)]) for n, t in trained.items()}
            (cloud,), _ = self.cloud_models([model.params], pool, [self.num_clients])
            model = fit(ClientModel(cloud, model.buffers), r)
        return model
