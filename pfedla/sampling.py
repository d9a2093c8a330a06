"""The client-sampling stream: a pure function of (seed, round), identical for every algorithm."""

from __future__ import annotations

import numpy as np

STREAM_SAMPLING = 5


def clients_per_round(num_clients: int, participation: float) -> int:
    return max(1, min(num_clients, round(participation * num_clients)))


def sample_clients(seed: int, round_idx: int, num_clients: int, participation: float) -> list[int]:
    """Sorted client ids sampled in round ``round_idx`` (1-based), without replacement."""
    m = clients_per_round(num_clients, participation)
    if m == num_clients:
        return list(range(num_clients))
    rng = np.random.default_rng(np.random.SeedSequence([seed, STREAM_SAMPLING, round_idx]))
    return sorted(rng.choice(num_clients, size=m, replace=False).tolist())
