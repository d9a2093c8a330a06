"""FedProto (Tan et al., "FedProto: Federated Prototype Learning across Heterogeneous Clients", AAAI 2022;
the authors' code: github.com/yuetan031/FedProto, lib/update.py and lib/utils.py).

Only class prototypes travel; every client trains its own model, which never leaves it. A prototype is the
mean of the body's features (pfedla/models/contract.py: the head's input) over a client's train samples of
one class.

- **Client.** The loss is the cross-entropy plus ``ld`` times the mean squared error between each
  sample's features and the global prototype of its label. The mean runs over batch and dimensions,
  as ``nn.MSELoss`` does. A label with no global prototype adds zero but still counts in the mean, as
  in the authors' code. After training, the client computes its prototypes (``Prototypes``, a plan's
  ``finish``) and uploads those of the classes it has.
- **Server.** The global prototype of class c is the plain mean over the round's clients that have c,
  unweighted by sample counts, as in the authors', PFLlib's and FL-bench's code. A class no client of
  the round has keeps no prototype.

Bytes count only the prototype rows on the wire: the global ones each client receives and the ones it
uploads, plus one byte per class for which rows are there.

Not from the authors' code:
- Prototypes are computed after local training, in eval mode, over the whole train split (PFLlib's
  ``collect_protos``). The authors average the features of the last local epoch in train mode, as
  the weights change.
- The features are the head's input (FL-bench, PFLlib), not the authors' fc1 output.

Scores: (a) is the client's own model, its head's prediction (the authors' "w/o protos"; their
nearest-prototype prediction is not scored here). (b) is that model after plain local SGD. A new
client has nothing of the federation to start from but prototypes, and the recipe's local training
(pfedla/unseen.py) is plain SGD, so it trains from scratch as Local's new client does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import MISSING
from torch import nn

from pfedla.algorithms.base import Algorithm, LocalPlan, Objective, Options, Report, options
from pfedla.algorithms.stacked import ClientModel
from pfedla.errors import check
from pfedla.models.contract import head_module

GLOBAL, GLOBAL_HAS = "proto/global", "proto/global_has"  # sent: [C, d] prototypes, [C] 1 where there is one
LOCAL, LOCAL_HAS = "proto/local", "proto/local_has"  # uploaded: the client's own, [C, d] and [C]


@options("schema_fedproto")
@dataclass
class FedProtoOptions(Options):
    ld: float = MISSING  # weight of the features' squared distance to their class's global prototype


class Prototypes:
    """FedProto's client-side step after training (a LocalPlan's ``finish``): the mean features per class over the
    client's train split, and which classes it has."""

    def __init__(self, num_classes: int, dim: int):
        self.num_classes, self.dim = num_classes, dim

    def __call__(self, trained: ClientModel, x, y, features) -> dict:
        f = features(trained, x)
        sums = torch.zeros(self.num_classes, self.dim, dtype=f.dtype, device=f.device).index_add_(0, y, f)
        counts = torch.bincount(y, minlength=self.num_classes).to(f.dtype)
        return {LOCAL: sums / counts.clamp(min=1)[:, None], LOCAL_HAS: (counts > 0).to(f.dtype)}

    def uploaded(self, received: ClientModel) -> dict:
        like = received.params[GLOBAL]
        return {LOCAL: torch.zeros_like(like), LOCAL_HAS: torch.zeros_like(received.params[GLOBAL_HAS])}


class FedProto(Algorithm):
    @staticmethod
    def check_config(cfg) -> None:
        check(cfg.ld >= 0, "algorithm.ld", cfg.ld, "must be >= 0 (0: each client trains as Local)", "1.0")

    def __init__(self, model: nn.Module, num_clients: int, cfg):
        super().__init__(model, num_clients)  # client_params/buffers: each client's own model, never sent
        head = head_module(model)
        self.ld = float(cfg.ld)
        self.head = (f"{model.head_name}.weight", f"{model.head_name}.bias")
        self.prototypes = Prototypes(head.out_features, head.in_features)
        self.register_buffer("global_protos", torch.zeros(head.out_features, head.in_features))
        self.register_buffer("global_has", torch.zeros(head.out_features))

    def model_for(self, i: int) -> ClientModel:
        own = self.own_model(i).all_kept()  # lives on the client: never sent either way, not counted
        self.count_bytes(down=self._wire_bytes(self.global_has))
        sent = {GLOBAL: self.global_protos.clone(), GLOBAL_HAS: self.global_has.clone()}
        return ClientModel({**own.params, **sent}, own.buffers, own.kept)

    def personalized_model(self, i: int) -> ClientModel:
        return self.own_model(i).all_kept()  # the client's own: scored where it is

    def _wire_bytes(self, has: torch.Tensor) -> int:
        """Prototype rows of the classes present, and one byte per class saying which."""
        return int(has.sum().item()) * self.global_protos.shape[1] * self.global_protos.element_size() + len(has)

    @torch.no_grad()
    def receive_round(self, reports: list[Report]) -> None:
        if not reports:
            return
        total = torch.zeros_like(self.global_protos, dtype=torch.float64)
        holders = torch.zeros_like(self.global_has, dtype=torch.float64)
        for r in reports:
            has = r.trained.params[LOCAL_HAS].double()
            total += r.trained.params[LOCAL].double() * has[:, None]
            holders += has
            self.client_params.set_row(r.client, r.trained.params)
            self.client_buffers.set_row(r.client, r.trained.buffers)
            self.count_bytes(up=self._wire_bytes(r.trained.params[LOCAL_HAS]))
        self.global_has.copy_((holders > 0).to(self.global_has.dtype))
        self.global_protos.copy_((total / holders.clamp(min=1)[:, None]).to(self.global_protos.dtype))

    def local_plan(self, epochs: int) -> LocalPlan:
        (weight, bias), ld = self.head, self.ld

        def loss(params, received, buffers, x, y, forward):
            features, new_buffers = forward(params, buffers, x, features=True)
            logits = F.linear(features, params[weight], params[bias])
            has = received[GLOBAL_HAS][y].bool()[:, None]
            target = torch.where(has, received[GLOBAL][y], features.detach())
            return F.cross_entropy(logits, y) + ld * F.mse_loss(features, target), new_buffers

        return LocalPlan.epochs(epochs, steps=(Objective(loss, frozenset(self.param_names)),), finish=self.prototypes)

    def adapt_plan(self, epochs: int) -> LocalPlan:
        return LocalPlan.epochs(epochs)

    def summary_fields(self, class_counts, groups=None) -> dict:
        return {"fedproto_classes_with_prototype": int(self.global_has.sum().item())}

    def personalize_new_client(self, initial: ClientModel, fit, rounds: int, generator: torch.Generator
                               ) -> ClientModel:
        """Local's recipe: the new client trains from the initial model for ``rounds`` local rounds."""
        for r in range(1, rounds + 1):
            initial = fit(initial, r)
        return initial
