"""Layer grouping for layer-wise aggregation: which parameters share one alpha vector.

Only parameters are grouped; buffers (BatchNorm running statistics) are never mixed across clients.
"""

from __future__ import annotations

from torch import nn

from pfedla.errors import ConfigError

GROUPINGS = ("module", "tensor", "block")


def layer_groups(model: nn.Module, grouping: str = "module") -> dict[str, list[str]]:
    """Ordered ``{layer name: [parameter names]}``.

    module: the parameters of one module (conv1.weight + conv1.bias -> "conv1");
    tensor: every parameter tensor on its own; block: everything under one top-level child.
    """
    if grouping not in GROUPINGS:
        raise ConfigError(f"algorithm.grouping={grouping} is unknown; valid: {', '.join(GROUPINGS)}")
    groups: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        if grouping == "tensor":
            key = name
        elif grouping == "block":
            key = name.split(".", 1)[0]
        else:
            key = name.rsplit(".", 1)[0] if "." in name else name
        groups.setdefault(key, []).append(name)
    return groups
