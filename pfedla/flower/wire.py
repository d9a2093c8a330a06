"""Tensors on the wire: named torch tensors <-> a Flower ArrayRecord, through NumPy's bytes, so a tensor arrives
with the very bits it left with (dtype, shape and values)."""

from __future__ import annotations

import torch
from flwr.app import Array, ArrayRecord

Tensors = dict[str, torch.Tensor]


def to_record(tensors: Tensors) -> ArrayRecord:
    """An ArrayRecord holding ``tensors`` (moved to the CPU, made contiguous; values untouched)."""
    return ArrayRecord({name: Array(t.detach().cpu().contiguous().numpy()) for name, t in tensors.items()},
                       keep_input=True)


def from_record(record: ArrayRecord) -> Tensors:
    """The tensors an ArrayRecord holds, as torch tensors (each its own copy)."""
    return {name: torch.from_numpy(array.numpy().copy()) for name, array in record.items()}
