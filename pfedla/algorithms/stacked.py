"""Client state as stacked tensors: ``{name: Tensor[num_clients, *shape]}``.

The client axis is a leading tensor dimension, so aggregation over clients is one ``einsum`` per
tensor and a round's clients are a row selection, never a Python loop over state_dicts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

Tensors = dict[str, torch.Tensor]


@dataclass
class ClientModel:
    """One client's model as plain tensors: trainable parameters and (never mixed) buffers.

    ``kept`` names the tensors (params or buffers) that are the client's own copy as of its last accepted local
    training, which the protocol keeps on the client (FedPer's head, LG-FedAvg's body, FedBN's BatchNorm,
    HeurpFedLA's retained layers, all of Local's, Ditto's personal model, APFL's local model, FedRoD's personal
    head, pFedMe's personal weights): a simulation holds that copy on the server, a deployment never sends it
    either way (pfedla/flower/). The client's own tensor behind a kept name is the one named without
    ``kept_prefix`` (Ditto trains its personal model under ``personal/`` + its name).

    ``held`` names tensors of the client's own model, under their own names, that the client already holds (its
    copy as of its last accepted local training, as for ``kept``) but that go up with the trained model, because
    the server reads them (FedAMP's and FedALA's own models, which it aggregates; FedFomo's, which it relays to
    peers; FedALA's weights, which the run's summary reports): a deployment does not send them down.

    ``copied`` names tensors that start as a copy of the one named without ``kept_prefix``, which the model also
    carries (pFedMe's personal model starts every round as the global model it was sent): a deployment does not
    send them down, and the node makes the copy.
    """

    params: Tensors
    buffers: Tensors
    kept: frozenset[str] = frozenset()
    kept_prefix: str = ""
    held: frozenset[str] = frozenset()
    copied: frozenset[str] = frozenset()

    def own_name(self, name: str) -> str:
        """The client's own tensor that kept tensor ``name`` is."""
        return name.removeprefix(self.kept_prefix)

    def all_kept(self) -> ClientModel:
        """This model with every tensor kept: the client's own model, as of its last accepted local training."""
        return ClientModel(self.params, self.buffers, frozenset([*self.params, *self.buffers]))


PERSONAL = "personal/"  # a client's personal model in its training state (Ditto, pFedMe)


def prefixed(model: ClientModel, prefix: str) -> ClientModel:
    """``model``'s tensors under ``prefix`` + their names (a second model in a client's training state)."""
    return ClientModel({prefix + n: t for n, t in model.params.items()},
                       {prefix + n: t for n, t in model.buffers.items()})


def unprefixed(params: dict, buffers: dict, prefix: str, param_names, buffer_names) -> ClientModel:
    """The model stored under ``prefix`` in a client's training state, under the model's own names."""
    return ClientModel({n: params[prefix + n] for n in param_names}, {n: buffers[prefix + n] for n in buffer_names})


class StackedTensors(nn.Module):
    """Named tensors with a leading client axis, kept as buffers so Lightning checkpoints them."""

    def __init__(self, tensors: Tensors):
        super().__init__()
        self.names = list(tensors)
        for name, value in tensors.items():
            self.register_buffer(tensor_key(name), value)

    @classmethod
    def repeat(cls, template: Tensors, num_clients: int) -> StackedTensors:
        """Every client starts from the same ``template`` tensors."""
        return cls({n: t.detach().unsqueeze(0).repeat(num_clients, *[1] * t.dim()) for n, t in template.items()})

    def __getitem__(self, name: str) -> torch.Tensor:
        return getattr(self, tensor_key(name))

    def as_dict(self) -> Tensors:
        return {n: self[n] for n in self.names}

    def row(self, i: int) -> Tensors:
        return {n: self[n][i] for n in self.names}

    @torch.no_grad()
    def set_row(self, i: int, values: Tensors, names=None) -> None:
        for n in self.names if names is None else names:
            self[n][i].copy_(values[n])


def tensor_key(name: str) -> str:
    # buffer names may not contain "."; PyTorch attribute names never contain "__" mid-name in our models.
    return name.replace(".", "__")


def nbytes(tensors: Tensors, names=None) -> int:
    return sum(tensors[n].numel() * tensors[n].element_size() for n in (tensors if names is None else names))

