"""The seam every federated algorithm plugs into (README, "Correctness" and "Baselines, faithfully").

An algorithm is an ``nn.Module`` owning all server-side state, so a Lightning checkpoint holds it.
One round, driven by ``pfedla.server.FederatedModule``::

    begin_round(ctx)                            # round-level set-up (batched over ctx.sampled, the sampled clients)
    for i in sampled:
        sent = model_for(i)                     # what the server sends client i
        trained = <client i trains from sent>
    receive_round(reports)                      # every finite result in one call; by default:
        receive(i, sent, trained, num_samples)  #   what the server does with each client's result,
        end_round()                             #   then round-level work (averaging, hypernetwork steps)

All sends in a round use the start-of-round state (clients train in parallel); state changes
are applied when the round is received.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING
from torch import nn

from pfedla.algorithms.stacked import ClientModel, StackedTensors
from pfedla.engines.batches import client_generator
from pfedla.engines.objectives import Objective

__all__ = ["Algorithm", "ClientData", "LocalPlan", "Objective", "Options", "Report", "RoundContext", "options"]


@dataclass
class Options:
    """The ``algorithm`` config node every algorithm's options extend: the class that is built (``_target_``,
    hydra.utils' dotted path) and the name its runs are reported under."""

    _target_: str = MISSING
    name: str = MISSING


def options(schema: str):
    """Register an Options dataclass as ``conf/algorithm``'s ``schema`` (an algorithm's yaml names it in its
    defaults list): the option types live next to the class that reads them."""

    def register(cls):
        ConfigStore.instance().store(group="algorithm", name=schema, node=cls)
        return cls

    return register


@dataclass(frozen=True)
class LocalPlan:
    """What a client does locally, as data both engines execute.

    By default SGD with the client.* settings on the cross-entropy of the model it received, in ``phases`` of
    (epochs, the parameter names trained then; None: all) one after another (FedRep: the head, then the
    body), plus ``prox_mu``/2 ||w - w_received||^2 in the loss (FedProx; 0: none). ``steps`` replaces that
    loss: every batch runs these objectives in order (several models per client, learned mixing weights, inner
    problems: Ditto, APFL, pFedMe, Per-FedAvg), each on its names within the phase's (one with none there is
    skipped: FedPAC trains its head by one loss, then its body by another). ``prepare`` runs before training,
    with the client's own data (FedFomo scores the models it received on validation, FedALA learns its
    aggregation weights); ``finish`` after it, with its train data (FedProto computes its class prototypes).
    ``lr`` replaces client.lr, ``max_batches`` stops after that many batches (Per-FedAvg's one-step
    adaptation)."""

    phases: tuple[tuple[int, frozenset[str] | None], ...]
    prox_mu: float = 0.0
    steps: tuple[Objective, ...] = ()
    lr: float | None = None
    max_batches: int | None = None
    prepare: Prepare | None = None
    finish: Finish | None = None

    def __post_init__(self):
        if self.steps and self.prox_mu:
            raise ValueError("a LocalPlan with steps trains what each Objective names: put a proximal term into "
                             "the objectives, not into prox_mu")

    @classmethod
    def epochs(cls, epochs: int, prox_mu: float = 0.0, **fields) -> LocalPlan:
        """``epochs`` of training every parameter."""
        return cls(((epochs, None),), prox_mu, **fields)

    def upload_template(self, received: ClientModel) -> ClientModel:
        """What a client's result holds (names, shapes, dtypes) for this plan: the state received, as ``prepare``
        changes it, plus what ``finish`` adds; for gathering results across processes."""
        model = received if self.prepare is None else self.prepare.uploaded(received)
        if self.finish is not None:
            model = ClientModel({**model.params, **self.finish.uploaded(received)}, model.buffers)
        return model

    def training_args(self, client_cfg) -> dict:
        """The keyword arguments both engines take for this plan with the ``client.*`` settings."""
        return dict(epochs=0, phases=self.phases, batch_size=client_cfg.batch_size,
                    lr=client_cfg.lr if self.lr is None else self.lr, momentum=client_cfg.momentum,
                    weight_decay=client_cfg.weight_decay, prox_mu=self.prox_mu, steps=self.steps,
                    max_batches=self.max_batches)


@dataclass(frozen=True)
class ClientData:
    """What a client's own work before training (a plan's ``prepare``) may read: its data, never another's."""

    val_loss: Callable  # val_loss(model): the mean cross-entropy of a ClientModel on its validation split (eval mode)
    train_x: torch.Tensor | None = None  # its train split
    train_y: torch.Tensor | None = None
    generator: torch.Generator | None = None  # its own randomness for this step, fixed by (seed, round, client)
    batch_size: int = 0  # client.batch_size


class Prepare(Protocol):
    """A client's work before it trains, on its own data (FedFomo scores peers on validation; FedALA learns its
    aggregation weights on part of its train split)."""

    def __call__(self, received: ClientModel, data: ClientData) -> tuple[ClientModel, dict]:
        """(the model the client trains from, tensors added to its upload)."""

    def uploaded(self, received: ClientModel) -> ClientModel:
        """What the client's result holds (names, shapes, dtypes), for gathering it across processes."""


class Finish(Protocol):
    """A client's work after it trains, on its own train data (FedProto's class prototypes)."""

    def __call__(self, trained: ClientModel, x, y, features: Callable) -> dict:
        """Tensors added to the client's upload; ``features(model, x)``: the body's output for inputs ``x`` under
        a ClientModel (eval mode; pfedla/models/contract.py)."""

    def uploaded(self, received: ClientModel) -> dict:
        """The tensors ``__call__`` adds (names, shapes, dtypes), for gathering results across processes."""


@dataclass(frozen=True)
class RoundContext:
    """What the server tells an algorithm about the round it begins: its 1-based ``index``, the clients ``sampled``
    for it, the run's ``seed`` (randomness of the method's own, keyed by round and client, comes from
    ``rng``/``generator``, never from a seed in its yaml or a counter it keeps) and the ``device`` of the state."""

    index: int
    sampled: list[int]
    seed: int = 0
    device: torch.device = torch.device("cpu")

    def rng(self, stream: int, client: int) -> np.random.Generator:
        """NumPy randomness of (seed, ``stream``, this round, ``client``): the same on every run and resume."""
        return np.random.default_rng(np.random.SeedSequence([self.seed, stream, self.index, client]))

    def generator(self, stream: int, client: int) -> torch.Generator:
        """Torch randomness of (seed, ``stream``, this round, ``client``) (as a client's batch order is drawn)."""
        return client_generator(self.seed, self.index, client, stream)


@dataclass(frozen=True)
class Report:
    """One client's result of a round, as the server hands it to ``Algorithm.receive_round``."""

    client: int
    sent: ClientModel  # what the server sent it (model_for)
    trained: ClientModel  # what it uploaded: its trained state, plus what its plan's prepare added
    num_samples: int  # its train split's size


class Algorithm(nn.Module):
    def __init__(self, model: nn.Module, num_clients: int):
        super().__init__()
        self.num_clients = num_clients
        self.param_names = [n for n, _ in model.named_parameters()]
        self.buffer_names = [n for n, _ in model.named_buffers()]
        # Each client's current model. Buffers (BatchNorm statistics) are client-local state.
        self.client_params = StackedTensors.repeat(dict(model.named_parameters()), num_clients)
        self.client_buffers = StackedTensors.repeat(dict(model.named_buffers()), num_clients)
        # Communication totals (bytes), checkpointed with the rest of the server state.
        self.register_buffer("bytes_down", torch.zeros((), dtype=torch.int64))
        self.register_buffer("bytes_up", torch.zeros((), dtype=torch.int64))

    @staticmethod
    def check_config(cfg) -> None:
        """Raise ConfigError (pfedla.errors.check/choice) for a bad value of this algorithm's options
        (``cfg``: the ``algorithm`` node), before any data is loaded. None to check by default."""

    # --- the round seam ---------------------------------------------------------------------------
    def begin_round(self, ctx: RoundContext) -> None:
        pass

    def model_for(self, i: int) -> ClientModel:
        raise NotImplementedError

    def receive(self, i: int, sent: ClientModel, trained: ClientModel, num_samples: int) -> None:
        raise NotImplementedError

    def end_round(self) -> None:
        pass

    def receive_round(self, reports: list[Report]) -> None:
        """Every finite result of the round, in one call (sampled order; rejected clients left out), after all
        clients trained. By default: ``receive`` each, then ``end_round``; a method that aggregates the round
        as a whole may override this instead."""
        for r in reports:
            self.receive(r.client, r.sent, r.trained, r.num_samples)
        self.end_round()

    def local_plan(self, epochs: int) -> LocalPlan:
        """What every client does locally (in a round, in its local adaptation, as a new client):
        ``epochs`` (client.epochs) of plain SGD by default."""
        return LocalPlan.epochs(epochs)

    def adapt_plan(self, epochs: int) -> LocalPlan:
        """The local adaptation of a scored model (score (b), and clients never seen in training): one model,
        so by default the round's plan; methods whose round trains several models adapt the scored one by SGD."""
        return self.local_plan(epochs)

    # --- evaluation -------------------------------------------------------------------------------
    # Score (a) is the personalized model as the server produces it; score (b) is that model after the
    # client's own local adaptation (pfedla.server). ``adapts = False``: (b) would only repeat what the
    # method already is (Local: its model is local training), so the method has the one score.
    adapts = True

    def personalized_model(self, i: int) -> ClientModel:
        """What the server would send client i now: the model scored as (a). Never changes server state."""
        return ClientModel(self.client_params.row(i), self.client_buffers.row(i))

    def personalized_models(self, clients: list[int]) -> list[ClientModel]:
        """``personalized_model`` for several clients (algorithms override it to batch the work)."""
        return [self.personalized_model(i) for i in clients]

    def scored_parts(self, clients: list[int]) -> list[ClientModel]:
        """What the server hands each of ``clients`` to be scored: ``personalized_models``, except for a method
        whose scored model is built from tensors the client keeps (``ClientModel.kept``): then the parts it is
        built from, which ``compose`` makes it from where those tensors are (on the node, in a deployment)."""
        return self.personalized_models(clients)

    def compose(self, parts: ClientModel) -> ClientModel:
        """The scored model from ``scored_parts``' parts, their kept tensors in place: the parts themselves, unless a
        method builds it (APFL: alpha v + (1 - alpha) w, v the client's own). ``personalized_model(i)`` is
        ``compose`` of client i's parts."""
        return parts

    def personalize_new_client(self, initial: ClientModel, fit, rounds: int, generator: torch.Generator
                               ) -> ClientModel:
        """Score (a) for a client that never trained (pfedla/unseen.py), by the method's own recipe.

        ``initial``: the untrained model every client started from (the new client's to change);
        ``fit(model, r)``: a copy of ``model`` after the new client's local round r (client.*, its train
        split), for r in 1..``rounds``; ``generator``: seeds whatever new parameters the recipe needs.
        Server state is never changed."""
        raise NotImplementedError(f"{type(self).__name__} has no recipe for clients never seen in training")

    def round_metrics(self) -> dict[str, float]:
        """The method's own statistics at an evaluated round, logged beside the scores (metrics.csv columns,
        each name with a slash: pFedLA's ``alpha/collapsed_<layer>``, the share of clients whose alpha has
        collapsed onto themselves, per layer; FedAMP's and pFedGraph's mean self-weight)."""
        return {}

    def set_label_counts(self, train_counts: list[list[int]]) -> None:
        """Each client's label histogram over its train split ([N, C]), given once before the first round: what
        a client could report. A method whose weights are fixed by it reads it (pFedLA's ``alpha=similarity``)."""

    @classmethod
    def has_new_client_recipe(cls, cfg) -> bool:
        """Whether ``personalize_new_client`` works with these options (``cfg``: the ``algorithm`` node)."""
        return cls.personalize_new_client is not Algorithm.personalize_new_client

    # --- what a finished run adds to its summary and run dir ----------------------------------------
    def summary_fields(self, class_counts, groups=None) -> dict:
        """Extra entries for summary.json; ``class_counts`` [N, C] is each client's label histogram, ``groups``
        each client's feature-skew group (None without feature skew)."""
        return {}

    def write_artifacts(self, run_dir) -> None:
        pass

    # --- helpers ----------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where the server state lives (its buffers follow the module: Lightning moves them)."""
        return self.bytes_up.device

    def own_model(self, i: int) -> ClientModel:
        return ClientModel(
            {n: t.clone() for n, t in self.client_params.row(i).items()},
            {n: t.clone() for n, t in self.client_buffers.row(i).items()},
        )

    def count_bytes(self, down: int = 0, up: int = 0) -> None:
        self.bytes_down += down
        self.bytes_up += up
