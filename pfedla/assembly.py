"""A run's parts, built from its config before anything trains: the clients' data, the initial model, the algorithm
and the engine its clients train on. No Lightning here: the simulation wraps the parts in its FederatedModule
(pfedla/run.py's ``setup``), and a deployment's ClientApp process, a fresh one for every message, builds them
alone (pfedla/flower/protocol.py's ``NodeWork``) without paying for importing Lightning."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig, open_dict
from torch import nn

from pfedla.algorithms import build_algorithm
from pfedla.algorithms.base import Algorithm
from pfedla.compute import Compute, choose_processes, runs_on_cpu
from pfedla.datasets import FederatedData, build_federated_data
from pfedla.engines import Engine, make_engine
from pfedla.models import build_model
from pfedla.sampling import clients_per_round
from pfedla.unseen import hold_out
from pfedla.validate import validate_config


@dataclass
class RunParts:
    model: nn.Module  # the architecture, holding the initial tensors every client starts from
    algorithm: Algorithm
    data: FederatedData  # the training federation
    unseen: FederatedData | None  # clients held out of every round (federation.unseen_fraction; pfedla/unseen.py)
    partition: FederatedData  # every client, held out or not
    engine: Engine  # how clients train and are scored (client.engine); its Compute is chosen where it runs


def assemble(cfg: DictConfig, federation: FederatedData | None = None) -> RunParts:
    """Everything before training: validation, data, model, algorithm, engine; ``trainer.devices=auto`` becomes a
    number in ``cfg`` (pfedla/compute.py). Raises ConfigError early. ``federation``: the clients' data as built
    elsewhere (a deployed server's: their facts alone, pfedla/flower/server_app.py) instead of from ``cfg``."""
    validate_config(cfg)
    partition = build_federated_data(cfg) if federation is None else federation
    fed = cfg.federation
    data, unseen = hold_out(partition, fed.unseen_fraction, cfg.seed)  # held-out clients never train
    with open_dict(cfg):
        cfg.trainer.devices = choose_processes(
            cfg.trainer, runs_on_cpu(cfg.trainer.accelerator), round(sum(data.train_sizes) * fed.participation),
            fed.rounds, clients_per_round(data.num_clients, fed.participation))
    torch.manual_seed(cfg.seed)  # every client starts from this one initial model
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    algorithm = build_algorithm(cfg.algorithm, model, data.num_clients)
    algorithm.set_label_counts([torch.bincount(y, minlength=data.num_classes).tolist() for y in data.train_y])
    engine = make_engine(cfg.client.engine, model, Compute(), cfg.trainer.eval_batch_size)
    return RunParts(model, algorithm, data, unseen, partition, engine)
