"""FedALA (Zhang et al., "FedALA: Adaptive Local Aggregation for Personalized Federated Learning", AAAI 2023;
the authors' code: github.com/TsingZ0/FedALA, and its ALA module in PFLlib's system/utils/ALA.py).

FedAvg's server. Each client mixes the global model into its own before training, by weights it learns.

- **Lower tensors.** All but the last ``layers`` parameter tensors take the global model's values. The
  count is of tensors, as the code's ``layer_idx``: 2 is the last Linear's weight and bias.
- **Top tensors.** The top ``layers`` tensors become theta = local + (global - local) * W, with one
  element-wise weight W in [0, 1] per parameter. W starts at 1 and is kept by the client across rounds.
- **Learning W.** W takes SGD steps on the cross-entropy of the mixed model, over a contiguous ``percent``
  share of the client's train split. The share starts at a random offset (seeded by seed, round and
  client). Batches follow in order, client.batch_size each. Per batch:
  W <- clamp(W - eta * dL/dtheta * (global - local), 0, 1), which is the exact gradient of L with
  respect to W, and then theta is recomputed. In a client's first adaptation the passes repeat until
  the last batch losses of ``window`` passes have a standard deviation below ``threshold``; each
  later round makes one pass.
- **Round one.** While the client's model still equals the global one (every client in round one), the
  step is skipped, as in the code.

The client then trains from theta as FedAvg's clients do and uploads its whole model. The server
averages the parameters by sample count. BatchNorm statistics stay each client's own, as in the code.

Scores: (a) is the client's own model after its last local training (an earlier PFLlib version scored
that; today's scores the mixed model before training, which needs the client's data). (b) is that model
after plain local SGD. A new client has no model of its own: mixing the global model with itself gives the
global model, FedAvg's recipe (pfedla/unseen.py).

Not in the code: ``max_passes`` caps the first adaptation's passes. The code has no cap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import MISSING
from torch import nn
from torch.func import functional_call

from pfedla.algorithms.base import Algorithm, ClientData, LocalPlan, Options, Report, options
from pfedla.algorithms.stacked import ClientModel, StackedTensors, nbytes
from pfedla.errors import check

GLOBAL = "global/"  # the global model in a client's state
WEIGHT = "ala/weight/"  # W, per top tensor (the client's own: never sent down, uploaded for the run's summary)
STARTED = "ala/started"  # 1 once the client has made its first (to convergence) adaptation


@options("schema_fedala")
@dataclass
class FedALAOptions(Options):
    layers: int = MISSING  # the last parameter tensors adapted (2: the last Linear's weight and bias)
    eta: float = MISSING  # W's learning rate
    percent: float = MISSING  # share of the train split W learns on
    threshold: float = MISSING  # the first adaptation stops when the last losses' std falls below this ...
    window: int = MISSING  # ... over this many passes
    max_passes: int = MISSING  # and in any case after this many passes


class AdaptiveLocalAggregation:
    """FedALA's client-side step before training (a LocalPlan's ``prepare``)."""

    def __init__(self, model: nn.Module, top: list[str], lower: list[str], cfg):
        self.model, self.top, self.lower = model, top, lower
        self.eta, self.percent, self.threshold = float(cfg.eta), float(cfg.percent), float(cfg.threshold)
        self.window, self.max_passes = int(cfg.window), int(cfg.max_passes)

    def __call__(self, received: ClientModel, data: ClientData) -> tuple[ClientModel, dict]:
        p = received.params
        local = {n: p[n] for n in self.top + self.lower}
        glob = {n: p[GLOBAL + n] for n in self.top + self.lower}
        weights = {n: p[WEIGHT + n].clone() for n in self.top}
        started = p[STARTED].clone()
        if all(torch.equal(local[n], glob[n]) for n in local):  # round one: nothing to mix yet
            return self._result(received, glob, weights, started)
        start = {n: glob[n].clone() for n in self.lower}
        mixed = lambda: {n: local[n] + (glob[n] - local[n]) * weights[n] for n in self.top}
        n = len(data.train_y)
        size = max(1, int(n * self.percent))
        offset = int(torch.randint(0, n - size + 1, (1,), generator=data.generator))
        x, y = data.train_x[offset:offset + size], data.train_y[offset:offset + size]
        self.model.train()
        losses = []
        for _ in range(self.max_passes):
            for s in range(0, size, data.batch_size):
                theta = {k: v.detach().requires_grad_(True) for k, v in mixed().items()}
                buffers = {k: v.clone() for k, v in received.buffers.items()}  # train mode: updated on copies
                logits = functional_call(self.model, {**start, **theta, **buffers}, (x[s:s + data.batch_size],))
                loss = F.cross_entropy(logits.float(), y[s:s + data.batch_size])
                grads = torch.autograd.grad(loss, list(theta.values()))
                with torch.no_grad():
                    for (k, _), g in zip(theta.items(), grads):
                        weights[k] = (weights[k] - self.eta * g * (glob[k] - local[k])).clamp(0, 1)
            losses.append(loss.item())
            if started.item() or (len(losses) > self.window and np.std(losses[-self.window:]) < self.threshold):
                break
        with torch.no_grad():
            model = {**start, **mixed()}
        return self._result(received, model, weights, torch.ones_like(started))

    def _result(self, received: ClientModel, params: dict, weights: dict, started: torch.Tensor):
        out = {n: params[n].detach().clone() for n in self.top + self.lower}
        return ClientModel(out, received.buffers), {**{WEIGHT + n: w for n, w in weights.items()}, STARTED: started}

    def uploaded(self, received: ClientModel) -> ClientModel:
        names = self.top + self.lower
        extra = {k: received.params[k] for k in [*(WEIGHT + n for n in self.top), STARTED]}
        return ClientModel({**{n: received.params[n] for n in names}, **extra}, received.buffers)


class FedALA(Algorithm):
    @staticmethod
    def check_config(cfg) -> None:
        check(cfg.layers >= 1, "algorithm.layers", cfg.layers, "must be >= 1 (parameter tensors adapted)", "2")
        check(cfg.eta > 0, "algorithm.eta", cfg.eta, "must be > 0", "1.0")
        check(0 < cfg.percent <= 1, "algorithm.percent", cfg.percent, "must be in (0, 1]", "0.8")
        check(cfg.window >= 1, "algorithm.window", cfg.window, "must be >= 1", "10")
        check(cfg.max_passes >= 1, "algorithm.max_passes", cfg.max_passes, "must be >= 1", "100")

    def __init__(self, model: nn.Module, num_clients: int, cfg):
        super().__init__(model, num_clients)  # client_params/buffers: each client's own model
        names = self.param_names
        layers = min(int(cfg.layers), len(names))
        self.top, self.lower = names[len(names) - layers:], names[:len(names) - layers]
        params = dict(model.named_parameters())
        self.global_model = StackedTensors.repeat(params, 1)
        self.weights = StackedTensors.repeat({n: torch.ones_like(params[n]) for n in self.top}, num_clients)
        self.register_buffer("started", torch.zeros(num_clients))
        self.ala = AdaptiveLocalAggregation(model, self.top, self.lower, cfg)

    def own_model(self, i: int) -> ClientModel:
        """The client's own: its model, its ALA weights W and its first-adaptation flag (under ``ala/``)."""
        own = super().own_model(i)
        own.params.update({**{WEIGHT + n: t.clone() for n, t in self.weights.row(i).items()},
                           STARTED: self.started[i].clone()})
        return own

    def model_for(self, i: int) -> ClientModel:
        own = self.own_model(i)  # lives on the client: not counted
        glob = {GLOBAL + n: t[0].clone() for n, t in self.global_model.as_dict().items()}
        self.count_bytes(down=nbytes(self.global_model.as_dict()))
        # its parameters go up trained (the global model's mean), W and the flag too (the run's summary reports
        # W), never down (held); its BatchNorm statistics stay on it (kept)
        return ClientModel({**own.params, **glob}, own.buffers, frozenset(own.buffers), held=frozenset(own.params))

    def personalized_model(self, i: int) -> ClientModel:
        return super().own_model(i).all_kept()  # the client's own model: scored where it is

    @torch.no_grad()
    def receive_round(self, reports: list[Report]) -> None:
        if not reports:
            return
        total = sum(r.num_samples for r in reports)
        for n in self.param_names:
            mean = sum(r.num_samples * r.trained.params[n].double() for r in reports) / total
            self.global_model[n][0].copy_(mean)
        for r in reports:
            params = {n: r.trained.params[n] for n in self.param_names}
            self.client_params.set_row(r.client, params)
            self.client_buffers.set_row(r.client, r.trained.buffers)
            self.weights.set_row(r.client, {n: r.trained.params[WEIGHT + n] for n in self.top})
            self.started[r.client] = r.trained.params[STARTED]
            self.count_bytes(up=nbytes(params))

    def local_plan(self, epochs: int) -> LocalPlan:
        return LocalPlan.epochs(epochs, prepare=self.ala)

    def adapt_plan(self, epochs: int) -> LocalPlan:
        return LocalPlan.epochs(epochs)

    def summary_fields(self, class_counts, groups=None) -> dict:
        """Per client, the mean of its ALA weights (1: the global model's values; 0: its own)."""
        means = torch.stack([torch.cat([self.weights[n][i].flatten() for n in self.top]).mean()
                             for i in range(self.num_clients)])
        return {"fedala_weight_mean": means.tolist()}

    def personalize_new_client(self, initial: ClientModel, fit, rounds: int, generator: torch.Generator
                               ) -> ClientModel:
        """The global model (mixing it with a model equal to it changes nothing), with the initial buffers."""
        return ClientModel({n: self.global_model[n][0].clone() for n in self.param_names}, initial.buffers)
