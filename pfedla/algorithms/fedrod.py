"""FedRoD (Chen & Chao, "On Bridging Generic and Personalized Federated Learning for Image Classification",
ICLR 2022). The authors' repository (hongyouc/Fed-RoD) holds no code; the details follow PFLlib's
clientrod.py / serverrod.py (the linear personal head; the hypernetwork variant is not built here).

The model is a body and a generic head (pfedla/models/contract.py). Both are FedAvg's: trained by every
client and averaged by sample count. Each client also keeps a personal head, a Linear of the generic
head's shape that starts as a copy of its initial weights and never leaves the client (ClientModel.kept:
a deployment's node keeps it, and composes the scored model with it). On each batch:

- the body and the generic head take a step on the balanced softmax loss, the cross-entropy of
  g(f(x)) + log n_c, where n_c counts class c in the client's train split;
- the personal head takes a step on the cross-entropy of g(f(x)) + p(f(x)), with f(x) and g(f(x))
  held constant.

Both are one SGD step of one loss whose two terms touch disjoint parameters (the detach separates
them). So they equal PFLlib's two optimizers with one lr on the same batch. train/loss reports the sum.
A class the client has none of gets log prior -1e4 instead of -inf: its softmax weight underflows to
exactly 0 in float32 all the same, and the upload stays finite.

Scores: (a) is the personalized model, g + p. Both heads are Linear on the same features, so it is the
model with head weight W_g + W_p and bias b_g + b_p, exactly. (b) is that model after plain local SGD.
A new client gets the generic model, the body with the generic head: the paper's point is that the
generic head serves clients that have no personal head (pfedla/unseen.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pfedla.algorithms.base import LocalPlan, Objective, options
from pfedla.algorithms.fedavg import AveragingOptions, FedAvg
from pfedla.algorithms.stacked import ClientModel, StackedTensors
from pfedla.engines.objectives import linear
from pfedla.models.contract import head_module, head_names

PERSONAL_HEAD = "personal_head/"  # the personal head's weight and bias in a client's training state
LOG_PRIOR = "rod/log_prior"  # log n_c of the client's train split (its own statistic: never sent)
NO_CLASS = -1e4  # log prior of a class the client has none of


@options("schema_fedrod")
@dataclass
class FedRoDOptions(AveragingOptions):
    """fedrod: no keys beyond the name."""


def rod_loss(head: str, personal: list[str]):
    """Balanced softmax of the generic logits (body, generic head) + cross-entropy of generic + personal logits
    with the features and generic logits held constant (the personal head)."""

    def loss(params, received, buffers, x, y, forward):
        features, new_buffers = forward(params, buffers, x, features=True)
        generic = linear(params, head + ".", features)
        balanced = F.cross_entropy(generic + received[LOG_PRIOR], y)
        mixed = generic.detach() + linear(params, PERSONAL_HEAD, features.detach())
        return balanced + F.cross_entropy(mixed, y), new_buffers

    return loss


class FedRoD(FedAvg):
    def __init__(self, model: nn.Module, num_clients: int, cfg=None):
        super().__init__(model, num_clients, cfg)
        self.head_params = head_names(model)  # fc3.weight, fc3.bias (a ConfigError if the model has no head)
        self.head = model.head_name
        initial = {n.rsplit(".", 1)[1]: p.detach() for n, p in model.named_parameters() if n in self.head_params}
        self.personal_head = StackedTensors.repeat(initial, num_clients)  # weight, bias: a copy of g's init
        self.log_prior = torch.zeros(num_clients, head_module(model).out_features)  # set_label_counts

    def set_label_counts(self, train_counts) -> None:
        counts = torch.tensor(train_counts, dtype=torch.float64)
        self.log_prior = torch.where(counts > 0, counts.clamp(min=1).log(), torch.full_like(counts, NO_CLASS))

    def own_model(self, i: int) -> ClientModel:
        """The client's own tensors: its copy of the shared model, its personal head (under ``personal_head/``)
        and the log prior of its labels, which never leave it (ClientModel.kept)."""
        own = super().own_model(i)
        head = own.params[self.head_params[0]]
        own.params.update({PERSONAL_HEAD + n: t.clone() for n, t in self.personal_head.row(i).items()})
        own.params[LOG_PRIOR] = self.log_prior[i].to(dtype=head.dtype, device=head.device)
        return own

    def _own_with_global(self, i: int) -> ClientModel:
        model = super()._own_with_global(i)
        model.kept = frozenset([*(PERSONAL_HEAD + n for n in self.personal_head.names), LOG_PRIOR])
        return model

    def receive(self, i: int, sent: ClientModel, trained: ClientModel, num_samples: int) -> None:
        super().receive(i, sent, trained, num_samples)  # body and generic head, averaged as FedAvg's
        self.personal_head.set_row(i, {n: trained.params[PERSONAL_HEAD + n] for n in self.personal_head.names})

    def local_plan(self, epochs: int) -> LocalPlan:
        trained = frozenset(self.param_names) | {PERSONAL_HEAD + n for n in self.personal_head.names}
        return LocalPlan.epochs(epochs, steps=(Objective(rod_loss(self.head, self.personal_head.names), trained),))

    def adapt_plan(self, epochs: int) -> LocalPlan:
        return LocalPlan.epochs(epochs)

    def personalized_model(self, i: int) -> ClientModel:
        return self.compose(self.scored_parts([i])[0])

    def scored_parts(self, clients: list[int]) -> list[ClientModel]:
        """Each client's generic model and its personal head (kept: in a deployment the node fills it in, and adds
        it to the generic head)."""
        return [super(FedRoD, self).personalized_model(i) for i in clients]

    def compose(self, parts: ClientModel) -> ClientModel:
        """The body with the generic head plus the client's personal one (two Linear heads on the same features
        sum to one with the summed weights and biases)."""
        params = {n: parts.params[n] for n in self.param_names}
        for n in self.personal_head.names:
            params[f"{self.head}.{n}"] = params[f"{self.head}.{n}"] + parts.params[PERSONAL_HEAD + n]
        return ClientModel(params, parts.buffers)
