"""FedFomo (Zhang et al., "Personalized Federated Learning with First Order Model Optimization", ICLR 2021).

Each client keeps its own model theta_i; the server only relays. Each round client i downloads M peer
models. Before it trains, it scores them on its own validation split (``LocalPlan.prepare``): the weight of
peer n is w_n = max(0, (L_i(theta_i) - L_i(theta_n)) / ||theta_n - theta_i||), how much that model lowers
its validation loss per unit of distance; it starts from theta_i + sum_n (w_n / sum w) (theta_n - theta_i)
(its own model if no peer helps) and trains as FedAvg's clients. The w_n go back to the server, which
adds them to the affinity matrix P[i, n]; peers are the M highest-affinity clients, or, with probability
epsilon_t for each slot, a random one (the paper's epsilon-greedy exploration, epsilon_t = ``epsilon`` -
(t - 1) ``epsilon_decay``, at least 0; seeded by (seed, round, client) through the round's context).
Parameters are combined; BatchNorm statistics stay the client's own. The scored model is theta_i. The
validation split thus takes part in training here (as in the paper), so FedFomo's val/acc, which picks its
best round, is optimistic next to other methods'; a client with no validation data weighs no peer (trains
as Local).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import MISSING
from torch import nn

from pfedla.algorithms.base import Algorithm, LocalPlan, Options, RoundContext, options
from pfedla.algorithms.stacked import ClientModel, nbytes
from pfedla.errors import check


@options("schema_fedfomo")
@dataclass
class FedFomoOptions(Options):
    peers: int = MISSING  # M: models each client downloads
    epsilon: float = MISSING  # exploration: probability of a random peer, per slot, in the first round
    epsilon_decay: float = MISSING  # subtracted from epsilon each round


WEIGHTS = "fomo/weights"
STREAM_FOMO_PEERS = 13  # which peers a client downloads


def peer(k: int) -> str:
    return f"peer{k}/"


class Scoring:
    """FedFomo's client-side step before training (a LocalPlan's ``prepare``)."""

    def __init__(self, param_names: list[str], peers: int):
        self.param_names, self.peers = param_names, peers

    def __call__(self, received: ClientModel, data) -> tuple[ClientModel, dict]:
        val_loss = data.val_loss
        own = ClientModel({n: received.params[n] for n in self.param_names}, received.buffers)
        own_loss = val_loss(own)
        weights, deltas = [], []
        for k in range(self.peers):
            other = {n: received.params[peer(k) + n] for n in self.param_names}
            delta = {n: other[n] - own.params[n] for n in self.param_names}
            distance = torch.sqrt(sum((d.double() ** 2).sum() for d in delta.values()))
            gain = own_loss - val_loss(ClientModel(other, received.buffers))
            weights.append(torch.clamp(gain / distance, min=0.0) if distance > 0 else torch.zeros_like(gain))
            deltas.append(delta)
        w = torch.stack(weights)
        start = {n: t.clone() for n, t in own.params.items()}
        if w.sum() > 0:
            share = (w / w.sum()).to(start[self.param_names[0]].dtype)
            for k, delta in enumerate(deltas):
                for n in self.param_names:
                    start[n] += share[k] * delta[n]
        return ClientModel(start, received.buffers), {WEIGHTS: w.to(start[self.param_names[0]].dtype)}

    def uploaded(self, received: ClientModel) -> ClientModel:
        first = received.params[self.param_names[0]]
        params = {n: received.params[n] for n in self.param_names}
        return ClientModel({**params, WEIGHTS: first.new_zeros(self.peers)}, received.buffers)


class FedFomo(Algorithm):
    @staticmethod
    def check_config(cfg) -> None:
        check(cfg.peers >= 1, "algorithm.peers", cfg.peers, "must be >= 1 (models each client downloads)", "5")
        check(0 <= cfg.epsilon <= 1, "algorithm.epsilon", cfg.epsilon, "must be in [0, 1]", "0.3")
        check(cfg.epsilon_decay >= 0, "algorithm.epsilon_decay", cfg.epsilon_decay, "must be >= 0", "0.05")

    def __init__(self, model: nn.Module, num_clients: int, cfg):
        super().__init__(model, num_clients)
        self.peers = min(int(cfg.peers), max(num_clients - 1, 1))
        self.epsilon, self.epsilon_decay = float(cfg.epsilon), float(cfg.epsilon_decay)
        self.register_buffer("affinity", torch.zeros(num_clients, num_clients, dtype=torch.float64))

    def peers_of(self, i: int, ctx: RoundContext) -> list[int]:
        """The M peers client i downloads in round ``ctx``: epsilon-greedy on its affinities (seeded)."""
        others = [n for n in range(self.num_clients) if n != i] or [i]
        rng = ctx.rng(STREAM_FOMO_PEERS, i)
        ranked = sorted(others, key=lambda n: (-float(self.affinity[i, n]), n))
        epsilon = max(0.0, self.epsilon - self.epsilon_decay * (ctx.index - 1))
        chosen: list[int] = []
        for _ in range(self.peers):
            left = [n for n in ranked if n not in chosen]
            chosen.append(int(rng.choice(left)) if rng.random() < epsilon else left[0])
        return chosen

    def begin_round(self, ctx: RoundContext) -> None:
        self._peers = {i: self.peers_of(i, ctx) for i in ctx.sampled}
        self._trained: dict[int, ClientModel] = {}

    def model_for(self, i: int) -> ClientModel:
        sent = self.own_model(i)  # its own model lives on the client: not counted, not sent down (held)
        sent.held, sent.kept = frozenset(sent.params), frozenset(sent.buffers)  # peers get its parameters alone
        for k, n in enumerate(self._peers[i]):
            for name, t in self.client_params.row(n).items():
                sent.params[peer(k) + name] = t.clone()
            self.count_bytes(down=nbytes(self.client_params.row(n)))
        return sent

    def personalized_model(self, i: int) -> ClientModel:
        return self.own_model(i).all_kept()  # the client's own: scored where it is

    def receive(self, i: int, sent: ClientModel, trained: ClientModel, num_samples: int) -> None:
        weights = trained.params[WEIGHTS]
        self._trained[i] = ClientModel({n: trained.params[n] for n in self.param_names}, trained.buffers)
        with torch.no_grad():
            for k, n in enumerate(self._peers[i]):
                self.affinity[i, n] += weights[k].double()
        self.count_bytes(up=nbytes(self._trained[i].params) + nbytes({WEIGHTS: weights}))

    def end_round(self) -> None:
        for i, trained in self._trained.items():
            self.client_params.set_row(i, trained.params)
            self.client_buffers.set_row(i, trained.buffers)
        del self._trained, self._peers

    def summary_fields(self, class_counts, groups=None) -> dict:
        """The affinity matrix P[i, n] (the weight client i gave peer n, summed over rounds)."""
        return {"fedfomo_affinity": self.affinity.tolist()}

    def local_plan(self, epochs: int) -> LocalPlan:
        return LocalPlan.epochs(epochs, prepare=Scoring(self.param_names, self.peers))

    def adapt_plan(self, epochs: int) -> LocalPlan:
        return LocalPlan.epochs(epochs)
