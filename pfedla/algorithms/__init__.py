"""Federated algorithms behind one interface (``pfedla.algorithms.base.Algorithm``).

An algorithm is a module here and a yaml in ``conf/algorithm/``: the yaml names the class (``_target_``) and the
options schema the module registers (``pfedla.algorithms.base.options``); every module of this package is
imported, so nothing else lists it.
"""

from __future__ import annotations

import importlib
import pkgutil

from hydra.utils import get_class
from torch import nn

from pfedla.algorithms.base import Algorithm
from pfedla.errors import ConfigError

for _module in pkgutil.iter_modules(__path__):  # registers every module's options schema
    importlib.import_module(f"{__name__}.{_module.name}")


def algorithm_class(cfg) -> type[Algorithm]:
    """The class ``cfg`` (the ``algorithm`` node) names in ``_target_``."""
    target = cfg.get("_target_")
    try:
        cls = get_class(target) if target else None
    except Exception:  # hydra raises a bare ImportError/ValueError wrapped in its own types
        cls = None
    if cls is None or not issubclass(cls, Algorithm):
        raise ConfigError(f"algorithm._target_={target!r} (algorithm={cfg.get('name')}) is not an Algorithm class; "
                          "give its dotted path, e.g. algorithm._target_=pfedla.algorithms.fedavg.FedAvg")
    return cls


def build_algorithm(cfg, model: nn.Module, num_clients: int) -> Algorithm:
    """``cfg`` is the ``algorithm`` config node; ``model`` gives the architecture and the initial weights."""
    return algorithm_class(cfg)(model, num_clients, cfg)


__all__ = ["Algorithm", "algorithm_class", "build_algorithm"]
