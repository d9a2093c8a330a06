"""APFL (Deng et al., "Adaptive Personalized Federated Learning", 2020).

Each client keeps a local model v_i and a mixing weight alpha_i; the global model w is trained and
averaged as FedAvg's. Every local step, on one batch (the paper's Algorithm 1): w descends on f(w), v_i
on f(v_bar) with v_bar = alpha_i v_i + (1 - alpha_i) w, and alpha_i (learned, ``learn_alpha``) on the same
f(v_bar), whose gradient is <grad f(v_bar), v_i - w>; alpha_i is kept in [0, 1] after each step, as the
public code clips it. All three gradients are taken at the step's starting point, as in the paper. The
scored model is v_bar with the current global w. BatchNorm statistics of v_bar are the client's own (those
of its local model); with alpha fixed at 0 or 1 (and no BatchNorm) APFL is FedAvg's global model or Local's
model. client.momentum and weight_decay apply to every tensor of the state, alpha included (the paper: plain
SGD; both default to 0). ``train/loss`` is f(w) + f(v_bar). v_i never leaves the client (ClientModel.kept): a
deployment's node keeps it and composes v_bar itself from the w and alpha_i the server sends (``compose``).
alpha_i goes down with w and up with w_i (the server reports it): the run counts its bytes both ways.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import MISSING
from torch import nn

from pfedla.algorithms.base import LocalPlan, Objective, Options, options
from pfedla.algorithms.fedavg import FedAvg
from pfedla.algorithms.stacked import ClientModel, StackedTensors, nbytes, prefixed, unprefixed
from pfedla.errors import check

LOCAL, ALPHA = "local/", "mix/alpha"


@options("schema_apfl")
@dataclass
class APFLOptions(Options):
    alpha: float = MISSING  # the mixing weight's initial value, in [0, 1]
    learn_alpha: bool = MISSING  # learn it (APFL's adaptive alpha) or keep it fixed


class APFL(FedAvg):
    @staticmethod
    def check_config(cfg) -> None:
        check(0 <= cfg.alpha <= 1, "algorithm.alpha", cfg.alpha, "must be in [0, 1] (its initial value)", "0.25")

    def __init__(self, model: nn.Module, num_clients: int, cfg):
        super().__init__(model, num_clients, cfg)  # client_params/client_buffers: each client's local model v_i
        self.learn_alpha = bool(cfg.learn_alpha)
        first = next(iter(model.parameters()))
        self.alpha = StackedTensors.repeat({"alpha": torch.tensor(float(cfg.alpha), dtype=first.dtype)}, num_clients)

    def model_for(self, i: int) -> ClientModel:
        sent = super().model_for(i)  # the global model (FedAvg's download)
        local = prefixed(self.own_model(i), LOCAL)  # v_i: never communicated, it lives on the client
        alpha = {ALPHA: self.alpha["alpha"][i].clone()}  # goes down, and up trained: counted both ways
        self.count_bytes(down=nbytes(alpha))
        return ClientModel({**sent.params, **local.params, **alpha},
                           {**sent.buffers, **local.buffers}, frozenset([*local.params, *local.buffers]), LOCAL)

    def receive(self, i: int, sent: ClientModel, trained: ClientModel, num_samples: int) -> None:
        super().receive(i, sent, trained, num_samples)
        local = unprefixed(trained.params, trained.buffers, LOCAL, self.param_names, self.buffer_names)
        local.params[ALPHA] = trained.params[ALPHA]
        self._trained[i] = local
        self.count_bytes(up=nbytes({ALPHA: trained.params[ALPHA]}))

    def end_round(self) -> None:
        for i, trained in self._trained.items():
            self.alpha.set_row(i, {"alpha": trained.params.pop(ALPHA)})
        super().end_round()

    def personalized_model(self, i: int) -> ClientModel:
        return self.compose(self.scored_parts([i])[0])

    def scored_parts(self, clients: list[int]) -> list[ClientModel]:
        """Each client's w, alpha_i and its own v_i (kept: in a deployment the node fills it in, and mixes)."""
        parts = []
        for i in clients:
            own = self.own_model(i)
            local = prefixed(own, LOCAL)  # v_i under local/ (new dicts: the next line leaves them as they are)
            glob = self._with_global(own)
            parts.append(ClientModel({**glob.params, **local.params, ALPHA: self.alpha["alpha"][i].clone()},
                                     local.buffers, frozenset([*local.params, *local.buffers]), LOCAL))
        return parts

    def compose(self, parts: ClientModel) -> ClientModel:
        """v_bar = alpha_i v_i + (1 - alpha_i) w with the client's own BatchNorm statistics."""
        alpha, p = parts.params[ALPHA], parts.params
        return ClientModel({n: alpha * p[LOCAL + n] + (1 - alpha) * p[n] for n in self.param_names},
                           {n: parts.buffers[LOCAL + n] for n in self.buffer_names})

    def summary_fields(self, class_counts, groups=None) -> dict:
        """Where the learned mixing weights ended: alpha_i per client (1: the local model alone, 0: the global)."""
        alpha = self.alpha["alpha"].double()
        return {"apfl_alpha": {"mean": alpha.mean().item(), "min": alpha.min().item(), "max": alpha.max().item(),
                               "per_client": alpha.tolist()}}

    def local_plan(self, epochs: int) -> LocalPlan:
        names = self.param_names

        def loss(params, received, buffers, x, y, forward):
            logits_w, buffers_w = forward(params, buffers, x)
            alpha = params[ALPHA]
            mixed = {LOCAL + n: alpha * params[LOCAL + n] + (1 - alpha) * params[n].detach() for n in names}
            logits_bar, buffers_bar = forward(mixed, buffers, x, LOCAL)
            f = torch.nn.functional.cross_entropy
            return f(logits_w, y) + f(logits_bar, y), {**buffers_w, **buffers_bar}

        trained = {*names, *(LOCAL + n for n in names), *([ALPHA] if self.learn_alpha else [])}
        return LocalPlan.epochs(epochs, steps=(Objective(loss, frozenset(trained), bounds={ALPHA: (0.0, 1.0)}),))

    def adapt_plan(self, epochs: int) -> LocalPlan:
        return LocalPlan.epochs(epochs)
