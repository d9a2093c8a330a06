"""The run's Hydra config, composed the same way on the server and on every node from the one string of overrides
Flower carries in its run config (``overrides``)."""

from __future__ import annotations

import shlex

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from pfedla.config import CONF_DIR  # importing it registers the schemas

# A deployment trains in one server process; its clients are the SuperNodes (checked by pfedla/validate.py too).
DEPLOYMENT = ("trainer.devices=1", "trainer.num_nodes=1")


def compose_run(overrides: str) -> DictConfig:
    """The config ``python -m pfedla.run <overrides>`` would run, in one process."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=[*shlex.split(overrides), *DEPLOYMENT])


def node_clients(node_config) -> list[int]:
    """The clients (positions in the training federation) a SuperNode holds: ``--node-config 'clients="0,1"'``."""
    text = str(node_config.get("clients", "")).strip()
    if not text:
        raise ValueError('this SuperNode names no clients: start it with --node-config \'clients="0,1"\'')
    return [int(c) for c in text.replace(" ", ",").split(",") if c]
