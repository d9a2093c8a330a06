"""Semantic checks on a composed config, run before any data is loaded or training starts.

Types and unknown keys are caught earlier by the dataclass schemas (pfedla/config.py); these are
the value rules. Each failure raises one ``ConfigError`` naming the key, the value and an example.
"""

from __future__ import annotations

import torch

from pfedla.algorithms import algorithm_class
from pfedla.compute import MEMORY_FORMATS, PRECISIONS
from pfedla.datasets.feature_skew import FEATURES, MAX_GROUPS
from pfedla.datasets.partition import QUANTITY_LAWS, build_label_skew
from pfedla.datasets.sources import TEST_IMAGES, build_source
from pfedla.engines import ENGINES
from pfedla.errors import check, choice
from pfedla.models import model_class
from pfedla.search import OBJECTIVES
from pfedla.unseen import num_unseen
from pfedla.viz.wandb_logger import MODES


def validate_config(cfg) -> None:
    fed, cl = cfg.federation, cfg.client
    check(fed.num_clients >= 1, "federation.num_clients", fed.num_clients, "must be >= 1", "20")
    check(fed.rounds >= 1, "federation.rounds", fed.rounds, "must be >= 1", "30")
    check(0 < fed.participation <= 1, "federation.participation", fed.participation, "must be in (0, 1]", "0.1")
    check(fed.eval_every >= 1, "federation.eval_every", fed.eval_every, "must be >= 1", "1")
    check(fed.adapt_every >= 0, "federation.adapt_every", fed.adapt_every, "must be >= 0 (0: never)", "5")
    choice("objective", cfg.objective, tuple(OBJECTIVES))
    if cfg.objective == "adapted":
        check(fed.adapt_every > 0, "federation.adapt_every", fed.adapt_every,
              "must be > 0 with objective=adapted: score (b) is the objective, so it must be computed", "5")
    check(0 <= fed.unseen_fraction < 1, "federation.unseen_fraction", fed.unseen_fraction, "must be in [0, 1)", "0.2")
    if fed.unseen_fraction > 0:
        held_out = num_unseen(fed.num_clients, fed.unseen_fraction)
        check(held_out < fed.num_clients, "federation.unseen_fraction", fed.unseen_fraction,
               f"holds out {held_out} of federation.num_clients={fed.num_clients}, leaving none to train", "0.2")
        check(fed.unseen_rounds >= 1, "federation.unseen_rounds", fed.unseen_rounds, "must be >= 1", "10")
    check(cl.epochs >= 1, "client.epochs", cl.epochs, "must be >= 1", "1")
    check(cl.batch_size >= 1, "client.batch_size", cl.batch_size, "must be >= 1", "32")
    check(cl.lr > 0, "client.lr", cl.lr, "must be > 0", "0.01")
    check(0 <= cl.momentum < 1, "client.momentum", cl.momentum, "must be in [0, 1)", "0.9")
    check(cl.weight_decay >= 0, "client.weight_decay", cl.weight_decay, "must be >= 0", "0.0")
    choice("client.on_nonfinite", cl.on_nonfinite, ("reject", "fail"))
    choice("client.engine", cl.engine, tuple(ENGINES))
    tc = cfg.trainer
    check(tc.devices == "auto" or (type(tc.devices) is int and tc.devices >= 1), "trainer.devices", tc.devices,
           "must be auto or an integer >= 1 (processes per node)", "2")
    check(tc.num_nodes >= 1, "trainer.num_nodes", tc.num_nodes, "must be >= 1", "1")
    choice("trainer.strategy", tc.strategy, ("auto", "ddp"))
    choice("trainer.memory_format", tc.memory_format, MEMORY_FORMATS)
    if tc.memory_format == "channels_last":
        check(ENGINES[cl.engine].channels_last, "trainer.memory_format", tc.memory_format,
               "needs client.engine=loop (vmap stacks weights into 5-D tensors, which have no channels_last layout)",
               "auto")
    choice("trainer.precision", str(tc.precision), PRECISIONS)
    check(tc.eval_batch_size >= 1, "trainer.eval_batch_size", tc.eval_batch_size, "must be >= 1", "256")
    gpus = torch.cuda.device_count()
    if tc.accelerator in ("gpu", "cuda") or (tc.accelerator == "auto" and gpus):
        check(tc.devices == "auto" or tc.devices <= max(gpus, 1), "trainer.devices", tc.devices,
               f"must be <= the {gpus} GPU(s) of this machine per node", str(max(gpus, 1)))
    check(cfg.checkpoint.every >= 1, "checkpoint.every", cfg.checkpoint.every, "must be >= 1", "1")
    check(cfg.viz.every >= 1, "viz.every", cfg.viz.every, "must be >= 1", "10")
    choice("logger", cfg.logger.name, ("wandb", "csv", "none"))
    if cfg.logger.name == "wandb" and cfg.logger.mode is not None:
        choice("logger.mode", cfg.logger.mode, MODES)

    ds = cfg.dataset
    build_source(ds)  # each dataset and label partition checks its own options, next to its class
    check(0 < ds.fraction <= 1, "dataset.fraction", ds.fraction, "must be in (0, 1]", "0.1")
    choice("dataset.test_images", ds.test_images, TEST_IMAGES)

    part = cfg.partition
    build_label_skew(part)
    check(0 < part.test_fraction < 1, "partition.test_fraction", part.test_fraction, "must be in (0, 1)", "0.25")
    check(0 < part.val_fraction < 1, "partition.val_fraction", part.val_fraction, "must be in (0, 1)", "0.1")
    check(part.min_samples >= 3, "partition.min_samples", part.min_samples,
           "must be >= 3 (one train, one validation, one test sample)", "10")
    choice("partition.feature", part.feature, FEATURES)
    if part.feature != "none":
        most = min(MAX_GROUPS.get(part.feature, cfg.federation.num_clients), cfg.federation.num_clients)
        check(2 <= part.groups <= most, "partition.groups", part.groups,
               f"must be in 2..{most} for partition.feature={part.feature} with "
               f"federation.num_clients={cfg.federation.num_clients}", str(min(most, 4)))
        level = part.feature_level
        check(level is None or level > 0, "partition.feature_level", level, "must be > 0 or null (the default)",
               "null")
    choice("partition.quantity", part.quantity, QUANTITY_LAWS)
    check(part.quantity_scale > 0, "partition.quantity_scale", part.quantity_scale, "must be > 0", "1.0")

    model_class(cfg.model)

    algo = cfg.algorithm
    algorithm = algorithm_class(algo)
    algorithm.check_config(algo)  # each algorithm checks its own options, next to its class
    if fed.unseen_fraction > 0:
        check(algorithm.has_new_client_recipe(algo), "federation.unseen_fraction",
              fed.unseen_fraction, f"needs a recipe for new clients, which algorithm={algo.name} does not have", "0")

