"""Semantic checks on a composed config, run before any data is loaded or training starts.

Types and unknown keys are caught earlier by the dataclass schemas (pfedla/config.py); these are
the value rules. Each failure raises one ``ConfigError`` naming the key, the value and an example.
"""

from __future__ import annotations

import torch

from pfedla.algorithms import ALGORITHMS
from pfedla.algorithms.hypernetwork import HEAD_INITS, NORMALISATIONS, OPTIMIZERS
from pfedla.compute import MEMORY_FORMATS, PRECISIONS
from pfedla.datasets.feature_skew import FEATURES, MAX_GROUPS
from pfedla.datasets.partition import QUANTITY_LAWS
from pfedla.datasets.sources import DATASET_NAMES
from pfedla.errors import ConfigError
from pfedla.models import MODEL_NAMES
from pfedla.models.layers import GROUPINGS
from pfedla.unseen import num_unseen
from pfedla.viz.wandb_logger import MODES

PARTITIONS = ("dirichlet", "pathological", "iid")


def _check(ok: bool, key: str, value, rule: str, example: str) -> None:
    if not ok:
        raise ConfigError(f"{key} {rule} (got {value!r}); try {key}={example}")


def _choice(group: str, value, valid) -> None:
    if value not in valid:
        raise ConfigError(f"{group}={value} is unknown; valid: {', '.join(valid)} (e.g. {group}={valid[0]})")


def validate_config(cfg) -> None:
    fed, cl = cfg.federation, cfg.client
    _check(fed.num_clients >= 1, "federation.num_clients", fed.num_clients, "must be >= 1", "20")
    _check(fed.rounds >= 1, "federation.rounds", fed.rounds, "must be >= 1", "30")
    _check(0 < fed.participation <= 1, "federation.participation", fed.participation, "must be in (0, 1]", "0.1")
    _check(fed.eval_every >= 1, "federation.eval_every", fed.eval_every, "must be >= 1", "1")
    _check(fed.adapt_every >= 0, "federation.adapt_every", fed.adapt_every, "must be >= 0 (0: never)", "5")
    _check(0 <= fed.unseen_fraction < 1, "federation.unseen_fraction", fed.unseen_fraction, "must be in [0, 1)", "0.2")
    if fed.unseen_fraction > 0:
        held_out = num_unseen(fed.num_clients, fed.unseen_fraction)
        _check(held_out < fed.num_clients, "federation.unseen_fraction", fed.unseen_fraction,
               f"holds out {held_out} of federation.num_clients={fed.num_clients}, leaving none to train", "0.2")
        _check(fed.unseen_rounds >= 1, "federation.unseen_rounds", fed.unseen_rounds, "must be >= 1", "10")
    _check(cl.epochs >= 1, "client.epochs", cl.epochs, "must be >= 1", "1")
    _check(cl.batch_size >= 1, "client.batch_size", cl.batch_size, "must be >= 1", "32")
    _check(cl.lr > 0, "client.lr", cl.lr, "must be > 0", "0.01")
    _check(0 <= cl.momentum < 1, "client.momentum", cl.momentum, "must be in [0, 1)", "0.9")
    _check(cl.weight_decay >= 0, "client.weight_decay", cl.weight_decay, "must be >= 0", "0.0")
    _choice("client.on_nonfinite", cl.on_nonfinite, ("reject", "fail"))
    _choice("client.engine", cl.engine, ("loop", "vmap"))
    tc = cfg.trainer
    _check(tc.devices == "auto" or (type(tc.devices) is int and tc.devices >= 1), "trainer.devices", tc.devices,
           "must be auto or an integer >= 1 (processes per node)", "2")
    _check(tc.num_nodes >= 1, "trainer.num_nodes", tc.num_nodes, "must be >= 1", "1")
    _choice("trainer.strategy", tc.strategy, ("auto", "ddp"))
    _choice("trainer.memory_format", tc.memory_format, MEMORY_FORMATS)
    if tc.memory_format == "channels_last":
        _check(cl.engine == "loop", "trainer.memory_format", tc.memory_format,
               "needs client.engine=loop (vmap stacks weights into 5-D tensors, which have no channels_last layout)",
               "auto")
    _choice("trainer.precision", str(tc.precision), PRECISIONS)
    _check(tc.eval_batch_size >= 1, "trainer.eval_batch_size", tc.eval_batch_size, "must be >= 1", "256")
    gpus = torch.cuda.device_count()
    if tc.accelerator in ("gpu", "cuda") or (tc.accelerator == "auto" and gpus):
        _check(tc.devices == "auto" or tc.devices <= max(gpus, 1), "trainer.devices", tc.devices,
               f"must be <= the {gpus} GPU(s) of this machine per node", str(max(gpus, 1)))
    _check(cfg.checkpoint.every >= 1, "checkpoint.every", cfg.checkpoint.every, "must be >= 1", "1")
    _check(cfg.viz.every >= 1, "viz.every", cfg.viz.every, "must be >= 1", "10")
    _choice("logger", cfg.logger.name, ("wandb", "csv", "none"))
    if cfg.logger.name == "wandb" and cfg.logger.mode is not None:
        _choice("logger.mode", cfg.logger.mode, MODES)

    ds = cfg.dataset
    _choice("dataset", ds.name, DATASET_NAMES)
    _check(0 < ds.fraction <= 1, "dataset.fraction", ds.fraction, "must be in (0, 1]", "0.1")

    part = cfg.partition
    _choice("partition", part.name, PARTITIONS)
    _check(0 < part.test_fraction < 1, "partition.test_fraction", part.test_fraction, "must be in (0, 1)", "0.25")
    _check(0 < part.val_fraction < 1, "partition.val_fraction", part.val_fraction, "must be in (0, 1)", "0.1")
    _check(part.min_samples >= 3, "partition.min_samples", part.min_samples,
           "must be >= 3 (one train, one validation, one test sample)", "10")
    if part.name == "dirichlet":
        _check(part.alpha is not None and part.alpha > 0, "partition.alpha", part.alpha, "must be > 0", "0.5")
    if part.name == "pathological":
        k = part.classes_per_client
        _check(k is not None and k >= 1, "partition.classes_per_client", k, "must be >= 1", "2")
    _choice("partition.feature", part.feature, FEATURES)
    if part.feature != "none":
        most = min(MAX_GROUPS.get(part.feature, cfg.federation.num_clients), cfg.federation.num_clients)
        _check(2 <= part.groups <= most, "partition.groups", part.groups,
               f"must be in 2..{most} for partition.feature={part.feature} with "
               f"federation.num_clients={cfg.federation.num_clients}", str(min(most, 4)))
        level = part.feature_level
        _check(level is None or level > 0, "partition.feature_level", level, "must be > 0 or null (the default)",
               "null")
    _choice("partition.quantity", part.quantity, QUANTITY_LAWS)
    _check(part.quantity_scale > 0, "partition.quantity_scale", part.quantity_scale, "must be > 0", "1.0")

    _choice("model", cfg.model.name, MODEL_NAMES)

    algo = cfg.algorithm
    _choice("algorithm", algo.name, tuple(ALGORITHMS))
    if algo.name in ("pfedla", "heurpfedla"):
        _check(algo.hn_lr > 0, "algorithm.hn_lr", algo.hn_lr, "must be > 0", "0.005")
        _check(0 <= algo.hn_momentum < 1, "algorithm.hn_momentum", algo.hn_momentum, "must be in [0, 1)", "0.0")
        for key, value in (("embedding_dim", algo.embedding_dim), ("hidden_dim", algo.hidden_dim)):
            _check(value >= 1, f"algorithm.{key}", value, "must be >= 1", "100")
        _check(algo.hidden_layers >= 1, "algorithm.hidden_layers", algo.hidden_layers, "must be >= 1", "3")
        _choice("algorithm.hn_optimizer", algo.hn_optimizer, OPTIMIZERS)
        _choice("algorithm.normalisation", algo.normalisation, NORMALISATIONS)
        _choice("algorithm.head_init", algo.head_init, HEAD_INITS)
        _choice("algorithm.grouping", algo.grouping, GROUPINGS)
        if algo.name == "heurpfedla":
            _check(algo.k >= 1, "algorithm.k", algo.k, "must be >= 1 for heurpfedla (k=0 is pfedla)", "2")
        else:
            _check(algo.k >= 0, "algorithm.k", algo.k, "must be >= 0", "0")
    if algo.name == "fedprox":
        _check(algo.mu >= 0, "algorithm.mu", algo.mu, "must be >= 0 (0: FedAvg)", "0.01")
    if algo.name in ("fedper", "lgfedavg", "fedrep"):
        _check(algo.head_layers >= 0, "algorithm.head_layers", algo.head_layers, "must be >= 0", "1")
    if algo.name == "fedrep":
        for key in ("head_epochs", "body_epochs"):
            _check(algo[key] >= 0, f"algorithm.{key}", algo[key], "must be >= 0", "1")
        _check(algo.head_epochs + algo.body_epochs >= 1, "algorithm.body_epochs", algo.body_epochs,
               "must leave at least one local epoch in all (head_epochs + body_epochs >= 1)", "1")
    if algo.name == "pfedhn":
        _check(algo.hn_lr > 0, "algorithm.hn_lr", algo.hn_lr, "must be > 0", "0.01")
        _check(0 <= algo.hn_momentum < 1, "algorithm.hn_momentum", algo.hn_momentum, "must be in [0, 1)", "0.9")
        _check(algo.hn_weight_decay >= 0, "algorithm.hn_weight_decay", algo.hn_weight_decay, "must be >= 0", "0.001")
        clip = algo.hn_max_grad_norm
        _check(clip is None or clip > 0, "algorithm.hn_max_grad_norm", clip, "must be > 0 or null (no clipping)", "50")
        _check(algo.hidden_dim >= 1, "algorithm.hidden_dim", algo.hidden_dim, "must be >= 1", "100")
        _check(algo.hidden_layers >= 0, "algorithm.hidden_layers", algo.hidden_layers, "must be >= 0", "3")
        emb = algo.embedding_dim
        _check(emb is None or emb >= 1, "algorithm.embedding_dim", emb, "must be >= 1 or null (1 + N/4)", "null")

