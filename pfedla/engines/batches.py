"""Which batches a client draws: its own seeded stream per (seed, stream, round, client), and the schedule of
index batches both engines step through (the same generator calls, so the same batches)."""

from __future__ import annotations

import numpy as np
import torch

# Batch-order streams: a round's local training, and the local adaptation scored at evaluation; a plan's prepare
# step (FedALA's sample of the train split). Others: pfedla/unseen.py 10-12, FedFomo 13, pfedla/datasets 14-15.
STREAM_CLIENT_BATCHES, STREAM_ADAPT_BATCHES, STREAM_PREPARE = 4, 6, 16


def client_generator(seed: int, round_idx: int, client: int, stream: int = STREAM_CLIENT_BATCHES) -> torch.Generator:
    """Batch-order randomness for (seed, round, client): reproducible without saving RNG state."""
    state = np.random.SeedSequence([seed, stream, round_idx, client]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def epoch_phases(epochs: int, phases=None) -> list:
    """The names trained in each epoch, in order (None: all): ``phases`` spelled out, or ``epochs`` of all."""
    if phases is None:
        return [None] * epochs
    return [names for count, names in phases for _ in range(count)]


def batch_schedule(size: int, epochs: int, batch_size: int, generator: torch.Generator,
                   max_batches: int | None = None) -> list[tuple[int, torch.Tensor]]:
    """(epoch, sample indices) of every batch a client with ``size`` samples trains on, in order: a fresh
    permutation per epoch from ``generator``, cut into ``batch_size`` slices (the last one partial), the
    first ``max_batches`` of them if given."""
    batches = []
    for epoch in range(epochs):
        order = torch.randperm(size, generator=generator)
        batches += [(epoch, order[s : s + batch_size]) for s in range(0, size, batch_size)]
    return batches if max_batches is None else batches[:max_batches]
