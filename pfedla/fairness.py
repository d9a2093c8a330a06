"""How accuracy spreads over clients: a mean hides the clients a federation serves worst.

``spread(acc)`` gives, for one evaluation's per-client accuracies, the unweighted mean, the standard
deviation over clients (population: these clients are the federation, not a sample of one), the worst
client, and the mean of the worst 10% of clients (``WORST_FRACTION``; at least one client, rounded up).
``spread_by_group`` gives the same per client group (feature-skew partitions, pfedla/datasets/feature_skew.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

WORST_FRACTION = 0.1


def spread(acc: Sequence[float]) -> dict:
    if not acc:
        raise ValueError("spread() needs at least one client's accuracy")
    n = len(acc)
    mean = sum(acc) / n
    worst_k = sorted(acc)[: max(1, math.ceil(WORST_FRACTION * n))]
    return {
        "mean": mean,
        "std": math.sqrt(sum((a - mean) ** 2 for a in acc) / n),
        "worst": min(acc),
        "worst10pct_mean": sum(worst_k) / len(worst_k),
        "clients": n,
    }


def spread_by_group(acc: Sequence[float], groups: Sequence[int]) -> dict[str, dict]:
    """{group id (as a string, for JSON): spread of that group's clients}."""
    if len(acc) != len(groups):
        raise ValueError(f"{len(acc)} accuracies for {len(groups)} group labels")
    members: dict[int, list[float]] = {}
    for a, g in zip(acc, groups):
        members.setdefault(int(g), []).append(a)
    return {str(g): spread(members[g]) for g in sorted(members)}
