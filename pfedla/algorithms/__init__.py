"""Federated algorithms behind one interface (``pfedla.algorithms.base.Algorithm``)."""

from __future__ import annotations

from torch import nn

from pfedla.algorithms.base import Algorithm
from pfedla.algorithms.fedavg import FedAvg, FedBN, FedPer, FedProx, FedRep, LGFedAvg, Local
from pfedla.algorithms.pfedhn import PFedHN
from pfedla.algorithms.pfedla import PFedLA
from pfedla.errors import ConfigError

ALGORITHMS = {
    "pfedla": PFedLA,
    "heurpfedla": PFedLA,
    "fedavg": FedAvg,
    "fedbn": FedBN,
    "fedper": FedPer,
    "fedprox": FedProx,
    "fedrep": FedRep,
    "lgfedavg": LGFedAvg,
    "pfedhn": PFedHN,
    "local": Local,
}


def build_algorithm(cfg, model: nn.Module, num_clients: int) -> Algorithm:
    """``cfg`` is the ``algorithm`` config node; ``model`` gives the architecture and the initial weights."""
    if cfg.name not in ALGORITHMS:
        raise ConfigError(f"algorithm={cfg.name} is unknown; valid: {', '.join(ALGORITHMS)} (e.g. algorithm=pfedla)")
    return ALGORITHMS[cfg.name](model, num_clients, cfg)


__all__ = ["ALGORITHMS", "Algorithm", "build_algorithm"]
