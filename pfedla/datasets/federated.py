"""Every client's train/validation/test tensors, built once per run from (dataset, partition, seed).

Each client's share is split once into test (``partition.test_fraction``) and the rest, and the rest
once more into train and validation (``partition.val_fraction`` of it); with ``dataset.test_images=held_out``
the test splits are the dataset's own test images instead, dealt by each client's label distribution.
Validation is what any choice (best round, hyperparameters) may look at; the test split is only ever
reported. With feature skew (``partition.feature``), every image of a client goes through its group's transform
(pfedla/datasets/feature_skew.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from pfedla.compute import REFERENCE, Compute
from pfedla.datasets.feature_skew import assign_groups, check_feature, level_of, transform
from pfedla.datasets.partition import (
    STREAM_FEATURE,
    STREAM_FRACTION,
    STREAM_GROUPS,
    STREAM_SPLIT,
    STREAM_TEST_DEAL,
    STREAM_TEST_FRACTION,
    STREAM_VAL,
    check_feasible,
    deal_by_label,
    partition,
    rng_for,
    split_train_test,
    stratified_subset,
)
from pfedla.datasets.sources import build_source, load_pooled


@dataclass
class FederatedData:
    train_x: list[torch.Tensor]  # per client [n_i, C, H, W]
    train_y: list[torch.Tensor]  # per client [n_i]
    val_x: list[torch.Tensor]
    val_y: list[torch.Tensor]
    test_x: list[torch.Tensor]
    test_y: list[torch.Tensor]
    num_classes: int
    fingerprint: str  # sha256 of the pooled indices per client (and groups): equal strings => identical split
    groups: list[int] | None = None  # each client's feature-skew group (None: no feature skew)
    feature: str = "none"  # the transform that tells the groups apart
    client_ids: list[int] | None = None  # each client's id in the whole partition (None: 0..N-1)

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

    @property
    def ids(self) -> list[int]:
        """Each client's id in the whole partition (differs from its position once clients are held out)."""
        return list(range(self.num_clients)) if self.client_ids is None else list(self.client_ids)

    def clients(self, positions: list[int]) -> FederatedData:
        """The federation of only these clients (by position), keeping their ids, groups and the fingerprint (and
        its kind: a FactsOnly's part is facts only too)."""
        pick = lambda ts: [ts[p] for p in positions]  # noqa: E731
        return type(self)(
            pick(self.train_x), pick(self.train_y), pick(self.val_x), pick(self.val_y), pick(self.test_x),
            pick(self.test_y), self.num_classes, self.fingerprint,
            None if self.groups is None else pick(self.groups), self.feature, pick(self.ids),
        )

    def split(self, name: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(xs, ys) of ``train``, ``val`` or ``test``."""
        return getattr(self, f"{name}_x"), getattr(self, f"{name}_y")

    def to(self, device: torch.device | str, compute: Compute = REFERENCE) -> FederatedData:
        """On ``device``, images in ``compute``'s memory format (pfedla/compute.py); labels as they are."""
        move = lambda ts: [t.to(device) for t in ts]  # noqa: E731
        images = lambda ts: [compute.laid_out(t.to(device)) for t in ts]  # noqa: E731
        return FederatedData(
            images(self.train_x), move(self.train_y), images(self.val_x), move(self.val_y),
            images(self.test_x), move(self.test_y), self.num_classes, self.fingerprint, self.groups, self.feature,
            self.client_ids,
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
            "feature": self.feature,
            "groups": self.groups,
        }


def build_federated_data(cfg) -> FederatedData:
    """Load the dataset, take the seeded subset, partition, split each client once into train/val/test, and
    (feature skew) pass each client's images through its group's transform.

    ``dataset.test_images`` decides where the test splits come from: ``pooled``, each client's share of the
    pooled train and test images; ``held_out``, only the dataset's own test images (the train images alone
    are partitioned), dealt to the clients by their label distributions (``deal_by_label``); ``unused``, each
    client's share of the train images, the test images never read (a search that cannot touch a final
    run's test image)."""
    part, num_clients, mode = cfg.partition, cfg.federation.num_clients, cfg.dataset.test_images
    source = f"dataset={cfg.dataset.name} (dataset.fraction={cfg.dataset.fraction})"
    if mode == "pooled":
        pooled = load_pooled(cfg.dataset, cfg.seed)
    else:
        pooled = build_source(cfg.dataset).load_parts(cfg.seed, with_test=mode == "held_out")
    labels = pooled.labels.numpy()
    train_end = len(labels) if pooled.test_start is None else pooled.test_start
    subset = stratified_subset(labels[:train_end], cfg.dataset.fraction, rng_for(cfg.seed, STREAM_FRACTION))
    check_feasible(part, num_clients, pooled.num_classes, len(subset), source)
    check_feature(part, num_clients, pooled.input_shape, source)
    clients = [subset[c] for c in partition(labels[subset], num_clients, part, cfg.seed)]
    if mode == "held_out":
        test_pool = train_end + stratified_subset(labels[train_end:], cfg.dataset.fraction,
                                                  rng_for(cfg.seed, STREAM_TEST_FRACTION))
        counts = [np.bincount(labels[c], minlength=pooled.num_classes) for c in clients]
        rest_idx = clients
        test_idx = [test_pool[d] for d in deal_by_label(labels[test_pool], counts, rng_for(cfg.seed, STREAM_TEST_DEAL))]
    else:
        rest_idx, test_idx = split_train_test(clients, part.test_fraction, rng_for(cfg.seed, STREAM_SPLIT))
    train_idx, val_idx = split_train_test(rest_idx, part.val_fraction, rng_for(cfg.seed, STREAM_VAL))
    digest = hashlib.sha256()
    for parts in zip(train_idx, val_idx, test_idx):
        digest.update(b"|".join(np.asarray(p, dtype=np.int64).tobytes() for p in parts) + b";")
    if mode != "pooled":  # the same indices mean other images once the test images are not pooled
        digest.update(f"test_images={mode}".encode())
    groups = None
    if part.feature != "none":
        groups = assign_groups(num_clients, part.groups, rng_for(cfg.seed, STREAM_GROUPS), part.group_of)
        level = level_of(part.feature, part.feature_level)
        digest.update(f"{part.feature}:{level!r}:{groups}".encode())
    take = lambda idx: [torch.as_tensor(i, dtype=torch.long) for i in idx]  # noqa: E731
    splits = {"train": take(train_idx), "val": take(val_idx), "test": take(test_idx)}

    def images(split: str) -> list[torch.Tensor]:
        xs = [pooled.images[i] for i in splits[split]]
        if groups is None:
            return xs
        return [transform(x, part.feature, groups[c], level, _feature_generator(cfg.seed, c, split))
                for c, x in enumerate(xs)]

    return FederatedData(
        train_x=images("train"),
        train_y=[pooled.labels[i] for i in splits["train"]],
        val_x=images("val"),
        val_y=[pooled.labels[i] for i in splits["val"]],
        test_x=images("test"),
        test_y=[pooled.labels[i] for i in splits["test"]],
        num_classes=pooled.num_classes,
        fingerprint=digest.hexdigest()[:16],
        groups=groups,
        feature=part.feature,
    )


def _feature_generator(seed: int, client: int, split: str) -> torch.Generator:
    """The fixed random stream of one client's split for a random transform (noise): the same every run."""
    stream = np.random.SeedSequence([seed, STREAM_FEATURE, client, ("train", "val", "test").index(split)])
    return torch.Generator().manual_seed(int(stream.generate_state(1, dtype=np.uint64)[0] >> 1))


def client_facts(data: FederatedData, positions: list[int]) -> dict:
    """What a server needs to know of these clients (by position) to run their federation without an image: the
    partition's fingerprint and shape, and per client its id, group and each split's class counts. JSON-able."""
    def counts(y: torch.Tensor) -> list[int]:
        return torch.bincount(y.cpu(), minlength=data.num_classes).tolist()

    return {
        "fingerprint": data.fingerprint, "num_classes": data.num_classes, "input_shape": list(data.input_shape),
        "feature": data.feature,
        "clients": {str(p): {"id": data.ids[p], "group": None if data.groups is None else data.groups[p],
                             **{split: counts(getattr(data, f"{split}_y")[p]) for split in ("train", "val", "test")}}
                    for p in positions},
    }


class FactsOnly(FederatedData):
    """A federation known by its facts alone (``client_facts``): what a deployed server runs on. Every image is a
    shape-only "meta" tensor, so code that would read one fails instead of computing on nothing; each split's
    labels are its class counts in class order, so sizes, label counts, partition.json and the weights of every
    size-weighted mean equal those of the federation the facts came from."""

    def to(self, device, compute: Compute = REFERENCE) -> FactsOnly:
        return self  # nothing to move: no image is here


def federation_from_facts(facts: list[dict], num_clients: int) -> FactsOnly:
    """The federation of clients 0..``num_clients``-1 from ``client_facts`` of one partition (one per node,
    together covering every client once)."""
    first = facts[0]
    rows = {int(p): row for f in facts for p, row in f["clients"].items()}
    if sorted(rows) != list(range(num_clients)):
        raise ValueError(f"facts of clients {sorted(rows)}, not of each of 0..{num_clients - 1} once")
    shape = tuple(first["input_shape"])

    def labels(counts: list[int]) -> torch.Tensor:
        return torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts, dtype=torch.long))

    split = {s: [labels(rows[c][s]) for c in range(num_clients)] for s in ("train", "val", "test")}
    images = {s: [torch.empty((len(y), *shape), device="meta") for y in ys] for s, ys in split.items()}
    ids = [rows[c]["id"] for c in range(num_clients)]
    groups = [rows[c]["group"] for c in range(num_clients)]
    return FactsOnly(images["train"], split["train"], images["val"], split["val"], images["test"], split["test"],
                     first["num_classes"], first["fingerprint"], None if groups[0] is None else groups,
                     first["feature"], None if ids == list(range(num_clients)) else ids)
