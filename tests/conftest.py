from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from pfedla.config import CONF_DIR  # importing it registers the schemas

os.environ.setdefault("WANDB_MODE", "disabled")

REPO = Path(__file__).resolve().parent.parent
# Small, learnable, seconds: synthetic data, 4 clients, 2 rounds.
SYNTHETIC = [
    "dataset=synthetic",
    "logger=none",
    "federation.num_clients=4",
    "federation.rounds=2",
    "client.lr=0.05",
    "client.momentum=0.9",
    "trainer.accelerator=cpu",
    "trainer.progress_bar=false",
]


def compose_config(overrides: list[str] | None = None):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides or []))


@pytest.fixture
def synthetic_cfg():
    def make(*extra: str):
        return compose_config(SYNTHETIC + list(extra))

    return make
