"""The shared architecture, built from its config node: ``_target_`` names the nn.Module class, the other keys
(but ``name``, the label runs are reported under) are its keyword arguments; the dataset adds ``input_shape`` and
``num_classes`` (pfedla/targets.py). A new architecture is a class and a yaml in ``conf/model/``."""

from __future__ import annotations

from torch import nn

from pfedla.targets import build, target_class

EXAMPLE = "pfedla.models.cnn.CNN"


def model_class(cfg) -> type[nn.Module]:
    """The class ``cfg`` (the ``model`` node) names in ``_target_``, checked before any data is loaded."""
    return target_class(cfg, "model", nn.Module, EXAMPLE)


def build_model(cfg, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The architecture every client shares, with its initial weights (from the global torch seed)."""
    return build(cfg, "model", nn.Module, EXAMPLE, input_shape=tuple(input_shape), num_classes=num_classes)
