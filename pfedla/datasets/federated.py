"""Every client's train/test tensors, built once per run from (dataset, partition, seed)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from pfedla.datasets.partition import (
    STREAM_FRACTION,
    STREAM_SPLIT,
    check_feasible,
    partition,
    rng_for,
    split_train_test,
    stratified_subset,
)
from pfedla.datasets.sources import load_pooled


@dataclass
class FederatedData:
    train_x: list[torch.Tensor]  # per client [n_i, C, H, W]
    train_y: list[torch.Tensor]  # per client [n_i]
    test_x: list[torch.Tensor]
    test_y: list[torch.Tensor]
    num_classes: int
    fingerprint: str  # sha256 of the pooled indices per client: equal strings => identical split

    @property
    def num_clients(self) -> int:
        return len(self.train_x)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x[0].shape[1:])

    @property
    def train_sizes(self) -> list[int]:
        return [len(y) for y in self.train_y]

    @property
    def test_sizes(self) -> list[int]:
        return [len(y) for y in self.test_y]

    def to(self, device: torch.device | str) -> FederatedData:
        move = lambda ts: [t.to(device) for t in ts]  # noqa: E731
        return FederatedData(
            move(self.train_x), move(self.train_y), move(self.test_x), move(self.test_y),
            self.num_classes, self.fingerprint,
        )

    def summary(self) -> dict:
        """What partition.json holds: per-client class counts and split sizes."""
        def counts(ys):
            return [torch.bincount(y.cpu(), minlength=self.num_classes).tolist() for y in ys]

        return {
            "num_clients": self.num_clients,
            "num_classes": self.num_classes,
            "fingerprint": self.fingerprint,
            "train_sizes": self.train_sizes,
            "test_sizes": self.test_sizes,
            "train_class_counts": counts(self.train_y),
            "test_class_counts": counts(self.test_y),
        }


def build_federated_data(cfg) -> FederatedData:
    """Pool the dataset, take the seeded subset, partition, split each client once into train/test."""
    pooled = load_pooled(cfg.dataset, cfg.seed)
    labels = pooled.labels.numpy()
    subset = stratified_subset(labels, cfg.dataset.fraction, rng_for(cfg.seed, STREAM_FRACTION))
    source = f"dataset={cfg.dataset.name} (dataset.fraction={cfg.dataset.fraction})"
    check_feasible(cfg.partition, cfg.federation.num_clients, pooled.num_classes, len(subset), source)
    clients = [subset[c] for c in partition(labels[subset], cfg.federation.num_clients, cfg.partition, cfg.seed)]
    train_idx, test_idx = split_train_test(clients, cfg.partition.test_fraction, rng_for(cfg.seed, STREAM_SPLIT))
    digest = hashlib.sha256()
    for tr, te in zip(train_idx, test_idx):
        digest.update(np.asarray(tr, dtype=np.int64).tobytes() + b"|" + np.asarray(te, dtype=np.int64).tobytes())
    take = lambda idx: [torch.as_tensor(i, dtype=torch.long) for i in idx]  # noqa: E731
    tr, te = take(train_idx), take(test_idx)
    return FederatedData(
        train_x=[pooled.images[i] for i in tr],
        train_y=[pooled.labels[i] for i in tr],
        test_x=[pooled.images[i] for i in te],
        test_y=[pooled.labels[i] for i in te],
        num_classes=pooled.num_classes,
        fingerprint=digest.hexdigest()[:16],
    )
