"""Ditto (Li et al., "Ditto: Fair and Robust Federated Learning Through Personalization", ICML 2021).

Two models per client: the global model w, trained and averaged exactly as FedAvg's, and a personal
model v_i that never leaves the client, trained on the client's loss plus lambda/2 ||v_i - w^t||^2, the
pull towards the global model w^t the client received this round. Both train on the same batches of
the round (client.epochs, client.lr; the paper's Algorithm 1 takes its own local steps for each; here the
personal model shares the global model's batch order). The personal model is the one scored; score (b)
adapts it by plain local SGD. The client's state travels to the engines as one dict: the global model
under its own names, the personal one under ``personal/`` (pfedla/engines/objectives.py). The personal model is
the client's own (ClientModel.kept): a deployment never sends it either way (pfedla/flower/).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import MISSING
from torch import nn

from pfedla.algorithms.base import LocalPlan, Objective, Options, options
from pfedla.algorithms.fedavg import FedAvg
from pfedla.algorithms.stacked import PERSONAL, ClientModel, prefixed, unprefixed
from pfedla.engines.objectives import cross_entropy
from pfedla.errors import check


@options("schema_ditto")
@dataclass
class DittoOptions(Options):
    lam: float = MISSING  # the personal model's pull lambda/2 ||v - w||^2 towards the received global model


class Ditto(FedAvg):
    @staticmethod
    def check_config(cfg) -> None:
        check(cfg.lam >= 0, "algorithm.lam", cfg.lam, "must be >= 0 (0: the personal model is Local's)", "0.1")

    def __init__(self, model: nn.Module, num_clients: int, cfg):
        super().__init__(model, num_clients, cfg)  # client_params/client_buffers: each client's personal model
        self.lam = float(cfg.lam)

    def model_for(self, i: int) -> ClientModel:
        sent = super().model_for(i)  # the global model (counted as FedAvg's download)
        personal = prefixed(self.own_model(i), PERSONAL)  # never communicated: it lives on the client
        return ClientModel({**sent.params, **personal.params}, {**sent.buffers, **personal.buffers},
                           frozenset([*personal.params, *personal.buffers]), PERSONAL)

    def receive(self, i: int, sent: ClientModel, trained: ClientModel, num_samples: int) -> None:
        super().receive(i, sent, trained, num_samples)  # the global part, averaged as FedAvg's
        self._trained[i] = unprefixed(trained.params, trained.buffers, PERSONAL, self.param_names, self.buffer_names)

    def personalized_model(self, i: int) -> ClientModel:
        return self.own_model(i).all_kept()

    def local_plan(self, epochs: int) -> LocalPlan:
        lam, names = self.lam, self.param_names

        def personal_loss(params, received, buffers, x, y, forward):
            logits, new_buffers = forward(params, buffers, x, PERSONAL)
            pull = sum(((params[PERSONAL + n] - received[n]) ** 2).sum() for n in names)
            return torch.nn.functional.cross_entropy(logits, y) + lam / 2 * pull, new_buffers

        return LocalPlan.epochs(epochs, steps=(
            Objective(cross_entropy, frozenset(names)),
            Objective(personal_loss, frozenset(PERSONAL + n for n in names)),
        ))

    def adapt_plan(self, epochs: int) -> LocalPlan:
        return LocalPlan.epochs(epochs)
