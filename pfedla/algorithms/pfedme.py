"""pFedMe (T. Dinh et al., "Personalized Federated Learning with Moreau Envelopes", NeurIPS 2020).

Each client keeps a local copy w_i of the global model and a personalized model theta_i. Every local
step, on one batch: ``inner_steps`` (K) SGD steps of lr ``personal_lr`` on the Moreau-envelope inner problem
f(theta) + lambda/2 ||theta - w_i||^2, then w_i <- w_i - client.lr * lambda (w_i - theta_i) (the gradient of
lambda/2 ||w_i - theta_i||^2). theta_i starts each round from the received global model, as in the public
code (it sets both to the global model). The server averages the local models (sample-weighted) and
takes a step of size ``beta``: w <- (1 - beta) w + beta mean_i w_i (beta = 1: FedAvg's average). The scored
model is theta_i; score (b) adapts it by plain local SGD. In a deployment (pfedla/flower/) theta_i never travels
down (the node copies it from w: ClientModel.copied) and its weights never up (kept on the node, scored there);
its BatchNorm statistics go up as w_i's, so the messages carry exactly the bytes the run counts (FedAvg's).
``train/loss`` is the first inner step's objective (the cross-entropy plus the pull). personal_lr x lam > 1
overshoots the pull each inner step (the public MNIST values, 0.09 x 15, do: the pull's contraction factor is
-0.35); client.momentum applies to the inner steps too (the paper: plain SGD; its default is 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import MISSING
from torch import nn

from pfedla.algorithms.base import LocalPlan, Objective, Options, options
from pfedla.algorithms.fedavg import FedAvg
from pfedla.algorithms.stacked import PERSONAL, ClientModel, prefixed, unprefixed
from pfedla.errors import check


@options("schema_pfedme")
@dataclass
class PFedMeOptions(Options):
    lam: float = MISSING  # lambda of the Moreau envelope
    inner_steps: int = MISSING  # K: SGD steps on the inner problem per batch
    personal_lr: float = MISSING  # their step size
    beta: float = MISSING  # the server's step towards the clients' average (1: FedAvg's)




class PFedMe(FedAvg):
    @staticmethod
    def check_config(cfg) -> None:
        check(cfg.lam > 0, "algorithm.lam", cfg.lam, "must be > 0", "15")
        check(cfg.inner_steps >= 1, "algorithm.inner_steps", cfg.inner_steps, "must be >= 1", "5")
        check(cfg.personal_lr > 0, "algorithm.personal_lr", cfg.personal_lr, "must be > 0", "0.09")
        check(0 < cfg.beta <= 2, "algorithm.beta", cfg.beta, "must be in (0, 2] (1: FedAvg's average)", "1.0")

    def __init__(self, model: nn.Module, num_clients: int, cfg):
        super().__init__(model, num_clients, cfg)  # client_params/client_buffers: each client's theta_i
        self.lam, self.inner_steps = float(cfg.lam), int(cfg.inner_steps)
        self.personal_lr, self.beta = float(cfg.personal_lr), float(cfg.beta)

    def model_for(self, i: int) -> ClientModel:
        sent = super().model_for(i)  # the global model; theta_i starts from it (pFedMe's set_parameters)
        start = prefixed(ClientModel({n: t.clone() for n, t in sent.params.items()},
                                     {n: t.clone() for n, t in sent.buffers.items()}), PERSONAL)
        # a deployment: theta_i is made on the node from the w it was sent (copied), and its weights stay there
        # (kept: scored there); its BatchNorm statistics go up, as they are w_i's too (receive)
        return ClientModel({**sent.params, **start.params}, {**sent.buffers, **start.buffers},
                           sent.kept | frozenset(start.params), PERSONAL, sent.held,
                           frozenset([*start.params, *start.buffers]))

    def receive(self, i: int, sent: ClientModel, trained: ClientModel, num_samples: int) -> None:
        # w_i runs no forward pass of its own: its BatchNorm statistics are theta_i's, from the same batches
        buffers = {**trained.buffers, **{n: trained.buffers[PERSONAL + n] for n in self.buffer_names}}
        super().receive(i, sent, ClientModel(trained.params, buffers), num_samples)  # w_i into the average
        self._trained[i] = unprefixed(trained.params, trained.buffers, PERSONAL, self.param_names, self.buffer_names)

    @torch.no_grad()
    def end_round(self) -> None:
        before = {n: self.global_model[n][0].clone() for n in self.shared_names}
        super().end_round()  # the global model is now the average of the w_i
        for n in self.shared_names:
            target = self.global_model[n][0]
            if target.is_floating_point():
                target.copy_((1 - self.beta) * before[n] + self.beta * target)

    def personalized_model(self, i: int) -> ClientModel:
        own = self.own_model(i)  # theta_i: its weights are on the client (kept), its BatchNorm statistics came up
        return ClientModel(own.params, own.buffers, frozenset(own.params))

    def local_plan(self, epochs: int) -> LocalPlan:
        lam, names = self.lam, self.param_names

        def inner(params, received, buffers, x, y, forward):  # f(theta) + lambda/2 ||theta - w_i||^2
            logits, new_buffers = forward(params, buffers, x, PERSONAL)
            pull = sum(((params[PERSONAL + n] - params[n].detach()) ** 2).sum() for n in names)
            return F.cross_entropy(logits, y) + lam / 2 * pull, new_buffers

        def outer(params, received, buffers, x, y, forward):  # lambda/2 ||w_i - theta||^2: w_i moves to theta
            return lam / 2 * sum(((params[n] - params[PERSONAL + n].detach()) ** 2).sum() for n in names), {}

        personal = frozenset(PERSONAL + n for n in names)
        steps = (Objective(inner, personal, lr=self.personal_lr),) * self.inner_steps
        return LocalPlan.epochs(epochs, steps=(*steps, Objective(outer, frozenset(names))))

    def adapt_plan(self, epochs: int) -> LocalPlan:
        return LocalPlan.epochs(epochs)
