"""Every client's train/validation/test tensors, built once per run from (dataset, partition, seed).

Each client's share is split once into test (``partition.test_fraction``) and the rest, and the rest
once more into train and validation (``partition.val_fraction`` of it). Validation is what any choice
(best round, hyperparameters) may look at; the test split is only ever reported.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from pfedla.compute import REFERENCE, Compute
from pfedla.datasets.partition import (
    STREAM_FRACTION,
    STREAM_SPLIT,
    STREAM_VAL,
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
    val_x: list[torch.Tensor]
    val_y: list[torch.Tensor]
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
    def val_sizes(self) -> list[int]:
        return [len(y) for y in self.val_y]

    @property
    def test_sizes(self) -> list[int]:
        return [len(y) for y in self.test_y]

    def split(self, name: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(xs, ys) of ``train``, ``val`` or ``test``."""
        return getattr(self, f"{name}_x"), getattr(self, f"{name}_y")

    def to(self, device: torch.device | str, compute: Compute = REFERENCE) -> FederatedData:
        """On ``device``, images in ``compute``'s memory format (pfedla/compute.py); labels as they are."""
        move = lambda ts: [t.to(device) for t in ts]  # noqa: E731
        images = lambda ts: [compute.laid_out(t.to(device)) for t in ts]  # noqa: E731
        return FederatedData(
            images(self.train_x), move(self.train_y), images(self.val_x), move(self.val_y),
            images(self.test_x), move(self.test_y), self.num_classes, self.fingerprint,
        )

    def class_counts(self) -> list[list[int]]:
        """[N, C]: each client's label histogram over its whole share (train + val + test)."""
        return [torch.bincount(torch.cat([y.cpu() for y in ys]), minlength=self.num_classes).tolist()
                for ys in zip(self.train_y, self.val_y, self.test_y)]

    def summary(self) -> dict:
        """What partition.json holds: per-client class counts and split sizes."""
        def counts(ys):
            return [torch.bincount(y.cpu(), minlength=self.num_classes).tolist() for y in ys]

        return {
            "num_clients": self.num_clients,
            "num_classes": self.num_classes,
            "fingerprint": self.fingerprint,
            "train_sizes": self.train_sizes,
            "val_sizes": self.val_sizes,
            "test_sizes": self.test_sizes,
            "train_class_counts": counts(self.train_y),
            "val_class_counts": counts(self.val_y),
            "test_class_counts": counts(self.test_y),
        }


def build_federated_data(cfg) -> FederatedData:
    """Pool the dataset, take the seeded subset, partition, split each client once into train/val/test."""
    pooled = load_pooled(cfg.dataset, cfg.seed)
    labels = pooled.labels.numpy()
    subset = stratified_subset(labels, cfg.dataset.fraction, rng_for(cfg.seed, STREAM_FRACTION))
    source = f"dataset={cfg.dataset.name} (dataset.fraction={cfg.dataset.fraction})"
    check_feasible(cfg.partition, cfg.federation.num_clients, pooled.num_classes, len(subset), source)
    clients = [subset[c] for c in partition(labels[subset], cfg.federation.num_clients, cfg.partition, cfg.seed)]
    rest_idx, test_idx = split_train_test(clients, cfg.partition.test_fraction, rng_for(cfg.seed, STREAM_SPLIT))
    train_idx, val_idx = split_train_test(rest_idx, cfg.partition.val_fraction, rng_for(cfg.seed, STREAM_VAL))
    digest = hashlib.sha256()
    for parts in zip(train_idx, val_idx, test_idx):
        digest.update(b"|".join(np.asarray(p, dtype=np.int64).tobytes() for p in parts) + b";")
    take = lambda idx: [torch.as_tensor(i, dtype=torch.long) for i in idx]  # noqa: E731
    tr, va, te = take(train_idx), take(val_idx), take(test_idx)
    return FederatedData(
        train_x=[pooled.images[i] for i in tr],
        train_y=[pooled.labels[i] for i in tr],
        val_x=[pooled.images[i] for i in va],
        val_y=[pooled.labels[i] for i in va],
        test_x=[pooled.images[i] for i in te],
        test_y=[pooled.labels[i] for i in te],
        num_classes=pooled.num_classes,
        fingerprint=digest.hexdigest()[:16],
    )
