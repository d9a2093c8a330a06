"""Averaging baselines, all one mechanism: shared tensors are averaged, personal tensors stay put.

FedAvg (McMahan et al., 2017): everything shared; sample-weighted average of the round's trained
models; evaluated as the global model. FedBN (Li et al., ICLR 2021): BatchNorm modules, selected
by type, keep affine parameters and running statistics per client. FedPer (Arivazhagan et al., 2019):
the last ``head_layers`` layers (the personalization layers) per client, the base averaged; FedRep
(Collins et al., 2021) the same split, trained head first, then body. LG-FedAvg
(Liang et al., 2020): the other way round, local representation layers and a global head. Local:
everything personal, nothing communicated. Each is a choice of ``personal_names``; bytes count only
what is shared. A client never seen in training gets the shared part and the trained clients' mean of
the personal part (``personalize_new_client``); its score (b) adapts that locally.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import MISSING
from torch import nn

from pfedla.algorithms.base import Algorithm, LocalPlan, Options, RoundContext, options
from pfedla.algorithms.stacked import ClientModel, StackedTensors, nbytes
from pfedla.errors import ConfigError, check
from pfedla.models.layers import layer_groups


@options("schema_averaging")
@dataclass
class AveragingOptions(Options):
    """fedavg, fedbn, local: no keys beyond the name."""


@options("schema_personal_head")
@dataclass
class PersonalHeadOptions(Options):
    """fedper (personal head), lgfedavg (personal body, global head)."""

    head_layers: int = MISSING  # the model's last layers that form the head


@options("schema_fedrep")
@dataclass
class FedRepOptions(Options):
    head_layers: int = MISSING  # the model's last layers that form the (personal) head
    head_epochs: int = MISSING  # local epochs of the head alone, first
    body_epochs: int = MISSING  # then local epochs of the body alone


@options("schema_fedprox")
@dataclass
class FedProxOptions(Options):
    mu: float = MISSING  # weight of the proximal term mu/2 ||w - w_global||^2


class FedAvg(Algorithm):
    # the personal tensors are the client's last trained ones, so they stay on it (ClientModel.kept); FedPAC's
    # server combines the heads, which must travel
    personal_stays_on_client = True

    def __init__(self, model: nn.Module, num_clients: int, cfg=None):
        super().__init__(model, num_clients)
        personal = set(self.personal_names(model))
        state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        self.shared_names = [n for n in state if n not in personal]
        self.personal_tensor_names = [n for n in state if n in personal]
        # The global model: one row of shared tensors (parameters and BatchNorm statistics alike).
        self.global_model = StackedTensors.repeat({n: state[n] for n in self.shared_names}, 1)

    def personal_names(self, model: nn.Module) -> list[str]:
        """Tensors that never leave the client; FedAvg shares everything."""
        return []

    def begin_round(self, ctx: RoundContext) -> None:
        super().begin_round(ctx)
        zeros = lambda n: torch.zeros_like(self.global_model[n][0], dtype=torch.float64)  # exact sums
        self._weighted_sum = {n: zeros(n) for n in self.shared_names}
        self._total_samples = 0
        self._trained: dict[int, ClientModel] = {}

    def model_for(self, i: int) -> ClientModel:
        sent = self._own_with_global(i)
        self.count_bytes(down=nbytes(self.global_model.as_dict()))
        return sent

    def receive(self, i: int, sent: ClientModel, trained: ClientModel, num_samples: int) -> None:
        state = {**trained.params, **trained.buffers}
        for n in self.shared_names:
            self._weighted_sum[n] += num_samples * state[n].double()
        self._total_samples += num_samples
        self._trained[i] = trained
        self.count_bytes(up=nbytes(state, self.shared_names))

    def end_round(self) -> None:
        for i, trained in self._trained.items():
            self.client_params.set_row(i, trained.params)
            self.client_buffers.set_row(i, trained.buffers)
        if self._total_samples:
            with torch.no_grad():
                for n in self.shared_names:
                    mean = self._weighted_sum[n] / self._total_samples
                    target = self.global_model[n][0]
                    target.copy_(mean.round() if not target.is_floating_point() else mean)
        del self._weighted_sum, self._trained

    def personalized_model(self, i: int) -> ClientModel:
        """FedAvg: the global model; FedBN: with the client's BatchNorm; Local: the client's own model."""
        return self._own_with_global(i)

    @torch.no_grad()
    def personalize_new_client(self, initial: ClientModel, fit, rounds: int, generator: torch.Generator
                               ) -> ClientModel:
        """FedAvg: the global model. FedBN: with, for the BatchNorm it has none of, the mean over the trained
        clients' (FedBN's paper has no recipe for new clients; its score (b) adapts them locally)."""
        model = self._with_global(initial)
        for n in self.personal_tensor_names:
            stacked = self.client_params[n] if n in model.params else self.client_buffers[n]
            mean = stacked.double().mean(0)
            (model.params if n in model.params else model.buffers)[n] = (
                mean.to(stacked.dtype) if stacked.is_floating_point() else mean.round().to(stacked.dtype))
        return model

    def _own_with_global(self, i: int) -> ClientModel:
        """Client ``i``'s model: the global tensors, and its own personal ones (kept on the client)."""
        model = self._with_global(self.own_model(i))
        if self.personal_stays_on_client:
            model.kept = frozenset(self.personal_tensor_names)
        return model

    def _with_global(self, model: ClientModel) -> ClientModel:
        for n in self.shared_names:
            (model.params if n in model.params else model.buffers)[n] = self.global_model[n][0].clone()
        return model


class FedBN(FedAvg):
    def personal_names(self, model: nn.Module) -> list[str]:
        names = [
            f"{module_name}.{tensor_name}"
            for module_name, module in model.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm)
            for tensor_name, _ in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        ]
        if not names:
            raise ConfigError(
                f"algorithm=fedbn needs a model with BatchNorm, but model={type(model).__name__} has none; "
                "try model=cnn_bn"
            )
        return names


class FedProx(FedAvg):
    """FedProx (Li et al., MLSys 2020): FedAvg whose clients add mu/2 ||w - w_global||^2 to their local loss."""

    @staticmethod
    def check_config(cfg) -> None:
        check(cfg.mu >= 0, "algorithm.mu", cfg.mu, "must be >= 0 (0: FedAvg)", "0.01")

    def __init__(self, model: nn.Module, num_clients: int, cfg):
        super().__init__(model, num_clients, cfg)
        self.mu = float(cfg.mu)

    def local_plan(self, epochs: int) -> LocalPlan:
        return LocalPlan.epochs(epochs, prox_mu=self.mu)


def head_tensors(model: nn.Module, head_layers: int) -> list[str]:
    """Parameters and buffers of the model's last ``head_layers`` layers (modules with parameters, in order)."""
    layers = list(layer_groups(model, "module"))
    if not 0 <= head_layers <= len(layers):
        raise ConfigError(f"algorithm.head_layers={head_layers} must be in [0, {len(layers)}] for the "
                          f"{len(layers)} layers of this model ({', '.join(layers)}); e.g. algorithm.head_layers=1")
    head = set(layers[len(layers) - head_layers:])
    return [n for n, _ in [*model.named_parameters(), *model.named_buffers()] if n.rsplit(".", 1)[0] in head]


class FedPer(FedAvg):
    @staticmethod
    def check_config(cfg) -> None:
        check(cfg.head_layers >= 0, "algorithm.head_layers", cfg.head_layers, "must be >= 0", "1")

    def __init__(self, model: nn.Module, num_clients: int, cfg):
        self.head_layers = cfg.head_layers  # read by personal_names during FedAvg's set-up
        super().__init__(model, num_clients, cfg)

    def personal_names(self, model: nn.Module) -> list[str]:
        return head_tensors(model, self.head_layers)


class FedRep(FedPer):
    """FedRep (Collins et al., ICML 2021): FedPer's split (a personal head, an averaged body) trained in phases,
    ``head_epochs`` of the head alone, then ``body_epochs`` of the body alone; this plan replaces client.epochs."""

    @staticmethod
    def check_config(cfg) -> None:
        FedPer.check_config(cfg)
        for key in ("head_epochs", "body_epochs"):
            check(cfg[key] >= 0, f"algorithm.{key}", cfg[key], "must be >= 0", "1")
        check(cfg.head_epochs + cfg.body_epochs >= 1, "algorithm.body_epochs", cfg.body_epochs,
              "must leave at least one local epoch in all (head_epochs + body_epochs >= 1)", "1")

    def __init__(self, model: nn.Module, num_clients: int, cfg):
        super().__init__(model, num_clients, cfg)
        head = set(self.personal_tensor_names)
        self.head = frozenset(n for n in self.param_names if n in head)
        self.body = frozenset(n for n in self.param_names if n not in head)
        self.head_epochs, self.body_epochs = int(cfg.head_epochs), int(cfg.body_epochs)

    def local_plan(self, epochs: int) -> LocalPlan:
        return LocalPlan(((self.head_epochs, self.head), (self.body_epochs, self.body)))


class LGFedAvg(FedPer):
    def personal_names(self, model: nn.Module) -> list[str]:
        head = set(head_tensors(model, self.head_layers))
        return [n for n, _ in [*model.named_parameters(), *model.named_buffers()] if n not in head]


class Local(FedAvg):
    adapts = False  # its model already is local training: one score

    def personal_names(self, model: nn.Module) -> list[str]:
        return [n for n, _ in [*model.named_parameters(), *model.named_buffers()]]

    def personalize_new_client(self, initial: ClientModel, fit, rounds: int, generator: torch.Generator
                               ) -> ClientModel:
        """Local: the new client trains from scratch, for ``rounds`` local rounds."""
        for r in range(1, rounds + 1):
            initial = fit(initial, r)
        return initial
