"""The shared architecture, built from its config node: ``_target_`` names the nn.Module class, the other keys
(but ``name``, the label runs are reported under) are its keyword arguments; the dataset adds ``input_shape`` and
``num_classes`` (``hydra.utils.instantiate``). A new architecture is a class and a yaml in ``conf/model/``."""

from __future__ import annotations

from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf
from torch import nn

from pfedla.errors import ConfigError


def model_class(cfg) -> type[nn.Module]:
    """The class ``cfg`` (the ``model`` node) names in ``_target_``, checked before any data is loaded."""
    target = cfg.get("_target_")
    try:
        cls = get_class(target) if target else None
    except Exception:
        cls = None
    if cls is None or not issubclass(cls, nn.Module):
        raise ConfigError(f"model._target_={target!r} (model={cfg.get('name')}) is not an nn.Module class; give its "
                          "dotted path, e.g. model._target_=pfedla.models.cnn.CNN")
    return cls


def build_model(cfg, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The architecture every client shares, with its initial weights (from the global torch seed)."""
    model_class(cfg)
    arguments = OmegaConf.create({k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "name"})
    try:
        return instantiate(arguments, input_shape=tuple(input_shape), num_classes=num_classes, _convert_="all")
    except Exception as err:  # hydra wraps what the constructor raises; a ConfigError stays one clear line
        if isinstance(err.__cause__, ConfigError):
            raise err.__cause__ from None
        raise
