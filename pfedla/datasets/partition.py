"""Seeded non-IID partitions of a pooled label array across clients.

Every function takes a ``numpy.random.Generator`` and returns one index array per client; the same
seed gives the same partition, whatever algorithm runs on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pfedla.errors import ConfigError, check
from pfedla.targets import build

# Independent random streams derived from the run seed, so changing one use never shifts another.
# (4 is a client's batch order, 6 its evaluation-time adaptation, 16 a plan's prepare: pfedla/engines/batches.py.)
STREAM_FRACTION, STREAM_PARTITION, STREAM_SPLIT, STREAM_VAL = 1, 2, 3, 5
STREAM_QUANTITY, STREAM_GROUPS, STREAM_FEATURE = 7, 8, 9
STREAM_TEST_FRACTION, STREAM_TEST_DEAL = 14, 15  # (10-12: pfedla/unseen.py; 13: FedFomo's peers)
QUANTITY_LAWS = ("none", "lognormal", "zipf")


def rng_for(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, stream]))


def stratified_subset(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of a subset keeping round(fraction * n_c) (at least 1) samples of every class c."""
    if fraction >= 1.0:
        return np.arange(len(labels))
    keep = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        keep.append(rng.permutation(members)[: max(1, round(fraction * len(members)))])
    return np.sort(np.concatenate(keep))


def client_weights(num_clients: int, law: str, scale: float, rng: np.random.Generator) -> np.ndarray | None:
    """Quantity skew: each client's relative size, drawn from a heavy-tailed law (None: equal sizes).

    ``lognormal``: w_i = exp(scale * z_i), z_i ~ N(0, 1). ``zipf``: w_i = r_i^-scale for a seeded random
    ranking r of 1..N (the largest client is 2^scale times the second). The label partitions then hand
    out every class in proportion to these weights (on top of their own label skew)."""
    if law == "none":
        return None
    if law == "lognormal":
        weights = np.exp(scale * rng.standard_normal(num_clients))
    elif law == "zipf":
        weights = (1.0 + rng.permutation(num_clients)) ** -scale
    else:
        raise ConfigError(f"partition.quantity={law} is unknown; valid: {', '.join(QUANTITY_LAWS)}")
    return weights / weights.sum()


def _cuts(n: int, weights: np.ndarray) -> np.ndarray:
    """Where to cut n items into len(weights) consecutive chunks of sizes proportional to weights."""
    return (np.cumsum(weights)[:-1] / weights.sum() * n).astype(int)


def iid_partition(labels: np.ndarray, num_clients: int, rng: np.random.Generator,
                  weights: np.ndarray | None = None) -> list[np.ndarray]:
    order = rng.permutation(len(labels))
    parts = np.array_split(order, num_clients) if weights is None else np.split(order, _cuts(len(order), weights))
    return [np.sort(part) for part in parts]


def dirichlet_partition(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    min_samples: int,
    rng: np.random.Generator,
    max_tries: int = 100,
    weights: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Label skew: class c's samples go to clients in proportions p_c ~ Dir(alpha * 1_N) (times the
    clients' quantity-skew ``weights``, renormalised, where given).

    Draws are repeated up to ``max_tries`` times until every client has ``min_samples``; for very
    small alpha or many clients that may never happen, so the last draw is then topped up
    deterministically by moving samples from the largest clients (terminates whenever
    ``len(labels) >= num_clients * min_samples``, which the caller checks).
    """
    classes = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(max(1, max_tries)):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for members in classes:
            members = rng.permutation(members)
            proportions = rng.dirichlet(np.full(num_clients, alpha))
            if weights is not None:
                proportions = proportions * weights / (proportions * weights).sum()
            cuts = (np.cumsum(proportions)[:-1] * len(members)).astype(int)
            for client, chunk in enumerate(np.split(members, cuts)):
                parts[client].append(chunk)
        clients = [np.concatenate(p) for p in parts]
        if min(len(c) for c in clients) >= min_samples:
            break
    else:
        clients = _top_up(clients, min_samples)
    return [np.sort(c) for c in clients]


def _top_up(clients: list[np.ndarray], min_samples: int) -> list[np.ndarray]:
    clients = list(clients)
    for needy in range(len(clients)):
        while len(clients[needy]) < min_samples:
            donor = max(range(len(clients)), key=lambda j: len(clients[j]))
            need = min(min_samples - len(clients[needy]), len(clients[donor]) - min_samples)
            if need <= 0:
                raise ConfigError("partition: not enough samples to give every client partition.min_samples")
            clients[needy] = np.concatenate([clients[needy], clients[donor][-need:]])
            clients[donor] = clients[donor][:-need]
    return clients


def pathological_partition(
    labels: np.ndarray, num_clients: int, classes_per_client: int, rng: np.random.Generator,
    weights: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Each client holds exactly ``classes_per_client`` classes; a class is split evenly among its holders
    (in proportion to their quantity-skew ``weights``, where given).

    Classes are handed out least-held first (random tie-break), so holders are balanced across classes.
    """
    class_ids = np.unique(labels)
    holders_per_class = np.zeros(len(class_ids), dtype=int)
    held: list[np.ndarray] = []
    for _ in range(num_clients):
        order = rng.permutation(len(class_ids))
        chosen = order[np.argsort(holders_per_class[order], kind="stable")[:classes_per_client]]
        holders_per_class[chosen] += 1
        held.append(chosen)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c_pos, c in enumerate(class_ids):
        holders = [i for i in range(num_clients) if c_pos in held[i]]
        if not holders:
            continue
        members = rng.permutation(np.flatnonzero(labels == c))
        if len(members) < len(holders):
            raise ConfigError(
                f"partition.classes_per_client={classes_per_client}: class {c} has {len(members)} samples "
                f"for {len(holders)} holders; use fewer clients or a larger dataset.fraction"
            )
        chunks = (np.array_split(members, len(holders)) if weights is None
                  else np.split(members, _cuts(len(members), weights[holders])))
        for client, chunk in zip(holders, chunks):
            parts[client].append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


def deal_by_label(labels: np.ndarray, class_counts: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Each client's indices into ``labels`` (a held-out test set): class c's samples, shuffled, go to the clients
    in proportion to their ``class_counts[i][c]`` (largest remainder), so each client's test labels follow its
    own label distribution and its test size its share's. A client left with none then gets one sample of its
    most frequent class it has test images of, from the client holding most of that class's and more than one test
    image (ConfigError if none can give one: too few test images for so many clients)."""
    counts = np.asarray(class_counts, dtype=np.float64)  # [N, C]
    dealt: list[list[int]] = [[] for _ in counts]
    for c in range(counts.shape[1]):
        members = rng.permutation(np.flatnonzero(labels == c))
        total = counts[:, c].sum()
        if total == 0 or len(members) == 0:
            continue
        exact = len(members) * counts[:, c] / total
        quota = np.floor(exact).astype(np.int64)
        by_remainder = np.argsort(-(exact - quota), kind="stable")
        quota[by_remainder[: len(members) - quota.sum()]] += 1
        for i, chunk in enumerate(np.split(members, np.cumsum(quota)[:-1])):
            dealt[i].extend(chunk.tolist())
    for i in range(len(dealt)):
        if dealt[i]:
            continue
        for c in np.argsort(-counts[i], kind="stable"):  # its most frequent class first
            donors = [j for j in range(len(dealt)) if len(dealt[j]) > 1 and any(labels[k] == c for k in dealt[j])]
            if counts[i, c] > 0 and donors:
                donor = max(donors, key=lambda j: sum(labels[k] == c for k in dealt[j]))
                taken = next(k for k in reversed(dealt[donor]) if labels[k] == c)
                dealt[donor].remove(taken)
                dealt[i].append(taken)
                break
        else:
            raise ConfigError(f"client {i} gets no test image of the classes it holds: {len(labels)} held-out test "
                              "images are too few for these clients; use a larger dataset.fraction or fewer "
                              "federation.num_clients")
    return [np.sort(np.asarray(d, dtype=np.int64)) for d in dealt]


def split_train_test(
    client_indices: list[np.ndarray], held_out_fraction: float, rng: np.random.Generator
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Split each client's share once into disjoint (rest, held-out) parts, ``held_out_fraction`` of it held
    out (at least one sample each). Used twice: share -> train+val / test, then train+val -> train / val."""
    rest, held_out = [], []
    for indices in client_indices:
        shuffled = rng.permutation(indices)
        n_held = min(max(1, round(held_out_fraction * len(indices))), len(indices) - 1)
        held_out.append(np.sort(shuffled[:n_held]))
        rest.append(np.sort(shuffled[n_held:]))
    return rest, held_out


class LabelSkew:
    """How labels are dealt to clients. Each option of ``conf/partition/`` names one subclass in ``_target_``; its
    constructor takes that yaml's keys it names, and checks them. The federation reads the other keys (the splits,
    feature and quantity skew) and ``min_samples`` (pfedla/datasets/federated.py), which Dirichlet takes too."""

    def __call__(self, labels: np.ndarray, num_clients: int, rng: np.random.Generator,
                 weights: np.ndarray | None) -> list[np.ndarray]:
        raise NotImplementedError

    def check_feasible(self, num_classes: int, source: str) -> None:
        """Rules that need the dataset (raised after loading, before partitioning)."""


@dataclass(frozen=True)
class IID(LabelSkew):
    def __call__(self, labels, num_clients, rng, weights):
        return iid_partition(labels, num_clients, rng, weights)


@dataclass(frozen=True)
class Dirichlet(LabelSkew):
    alpha: float
    min_samples: int
    max_tries: int = 100

    def __post_init__(self):
        check(self.alpha > 0, "partition.alpha", self.alpha, "must be > 0", "0.5")  # null: refused by build
        check(self.max_tries >= 1, "partition.max_tries", self.max_tries, "must be >= 1", "100")

    def __call__(self, labels, num_clients, rng, weights):
        return dirichlet_partition(labels, num_clients, self.alpha, self.min_samples, rng, self.max_tries, weights)


@dataclass(frozen=True)
class Pathological(LabelSkew):
    classes_per_client: int

    def __post_init__(self):
        k = self.classes_per_client
        check(k >= 1, "partition.classes_per_client", k, "must be >= 1", "2")

    def __call__(self, labels, num_clients, rng, weights):
        return pathological_partition(labels, num_clients, self.classes_per_client, rng, weights)

    def check_feasible(self, num_classes, source):
        if self.classes_per_client > num_classes:
            raise ConfigError(
                f"partition.classes_per_client must be <= the {num_classes} classes of {source} "
                f"(got {self.classes_per_client}); try partition.classes_per_client={min(2, num_classes)}"
            )


FRAMEWORK_KEYS = frozenset({"test_fraction", "val_fraction", "min_samples", "feature", "groups", "group_of",
                            "feature_level", "quantity", "quantity_scale"})


def build_label_skew(cfg) -> LabelSkew:
    """The label partition ``cfg`` (the ``partition`` node) names, with its options checked."""
    return build(cfg, "partition", LabelSkew, "pfedla.datasets.partition.Dirichlet", FRAMEWORK_KEYS)


def check_feasible(cfg, num_clients: int, num_classes: int, num_samples: int, source: str) -> None:
    """Rules that need the dataset's size; raised after loading, before partitioning or training."""
    build_label_skew(cfg).check_feasible(num_classes, source)
    if num_samples < num_clients * cfg.min_samples:
        raise ConfigError(
            f"federation.num_clients={num_clients} x partition.min_samples={cfg.min_samples} needs "
            f"{num_clients * cfg.min_samples} samples but {source} has {num_samples}; "
            "use fewer federation.num_clients or a larger dataset.fraction"
        )


def partition(labels: np.ndarray, num_clients: int, cfg, seed: int) -> list[np.ndarray]:
    """Each client's indices into ``labels``: the label skew ``cfg`` (the ``partition`` node) names, with
    ``cfg.quantity``'s client sizes."""
    rng = rng_for(seed, STREAM_PARTITION)
    weights = client_weights(num_clients, cfg.quantity, cfg.quantity_scale, rng_for(seed, STREAM_QUANTITY))
    clients = build_label_skew(cfg)(labels, num_clients, rng, weights)
    smallest = min(range(num_clients), key=lambda i: len(clients[i]))
    if len(clients[smallest]) < cfg.min_samples:
        raise ConfigError(
            f"partition={cfg.name}: client {smallest} gets {len(clients[smallest])} samples, below "
            f"partition.min_samples={cfg.min_samples}; use fewer federation.num_clients or a larger dataset.fraction"
        )
    return clients
