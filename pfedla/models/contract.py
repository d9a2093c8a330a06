"""The body/head contract: what a model offers methods that treat its classifier apart (FedRoD, FedBABU).

A model meets it with a class attribute ``head_name``, the name of its classifier: an ``nn.Linear`` child
applied last, and a ``forward(x, features=False)`` whose ``features=True`` returns the body's output, the
head's input, so that ``model(x) == head(model(x, features=True))``. Every model in ``conf/model/`` meets it
(tests/test_models.py). The body is every tensor outside the head.
"""

from __future__ import annotations

from torch import nn

from pfedla.errors import ConfigError


def head_module(model: nn.Module) -> nn.Linear:
    """The model's classifier, or one ConfigError naming what the model lacks."""
    name = getattr(model, "head_name", None)
    head = getattr(model, name, None) if isinstance(name, str) else None
    if not isinstance(head, nn.Linear):
        raise ConfigError(f"model={type(model).__name__} does not meet the body/head contract: it needs a class "
                          "attribute head_name naming its nn.Linear classifier and forward(x, features=False) "
                          "(pfedla/models/contract.py); e.g. model=cnn_bn")
    return head


def head_names(model: nn.Module) -> list[str]:
    """The classifier's parameters, under the model's names (``fc3.weight``, ``fc3.bias``)."""
    head_module(model)
    return [f"{model.head_name}.{n}" for n, _ in getattr(model, model.head_name).named_parameters()]


def body_names(model: nn.Module) -> list[str]:
    """Every parameter outside the head."""
    head = set(head_names(model))
    return [n for n, _ in model.named_parameters() if n not in head]
