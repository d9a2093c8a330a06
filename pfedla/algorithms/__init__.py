"""Federated algorithms behind one interface (``pfedla.algorithms.base.Algorithm``).

An algorithm is a module here and a yaml in ``conf/algorithm/``: the yaml names the class (``_target_``) and the
options schema the module registers (``pfedla.algorithms.base.options``); every module of this package is
imported, so nothing else lists it.
"""

from __future__ import annotations

import importlib
import pkgutil

from torch import nn

from pfedla.algorithms.base import Algorithm
from pfedla.targets import target_class

for _module in pkgutil.iter_modules(__path__):  # registers every module's options schema
    importlib.import_module(f"{__name__}.{_module.name}")


def algorithm_class(cfg) -> type[Algorithm]:
    """The class ``cfg`` (the ``algorithm`` node) names in ``_target_``."""
    return target_class(cfg, "algorithm", Algorithm, "pfedla.algorithms.fedavg.FedAvg")


def build_algorithm(cfg, model: nn.Module, num_clients: int) -> Algorithm:
    """``cfg`` is the ``algorithm`` config node; ``model`` gives the architecture and the initial weights."""
    return algorithm_class(cfg)(model, num_clients, cfg)


__all__ = ["Algorithm", "algorithm_class", "build_algorithm"]
