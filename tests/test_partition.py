import numpy as np
import pytest
import torch

from pfedla.datasets import build_federated_data
from pfedla.datasets.partition import (
    dirichlet_partition,
    iid_partition,
    pathological_partition,
    rng_for,
    split_train_test,
    stratified_subset,
)
from pfedla.errors import ConfigError

LABELS = np.repeat(np.arange(10), 200)  # 2000 samples, 10 balanced classes


def _assert_exact_cover(parts, n):
    joined = np.concatenate(parts)
    assert len(joined) == n, "a sample is duplicated or missing"
    assert np.array_equal(np.sort(joined), np.arange(n))


@pytest.mark.parametrize(
    "make",
    [
        lambda rng: iid_partition(LABELS, 7, rng),
        lambda rng: dirichlet_partition(LABELS, 7, 0.3, 10, rng),
        lambda rng: pathological_partition(LABELS, 7, 2, rng),
    ],
    ids=["iid", "dirichlet", "pathological"],
)
def test_every_sample_lands_in_exactly_one_client(make):
    _assert_exact_cover(make(rng_for(0, 2)), len(LABELS))


def test_pathological_clients_hold_exactly_k_classes():
    for k in (1, 2, 3):
        parts = pathological_partition(LABELS, 12, k, rng_for(0, 2))
        assert [len(np.unique(LABELS[p])) for p in parts] == [k] * 12


def test_dirichlet_skew_grows_as_alpha_shrinks():
    def skew(alpha):  # mean over clients of the share of their most common class
        parts = dirichlet_partition(LABELS, 10, alpha, 10, rng_for(0, 2))
        return np.mean([np.bincount(LABELS[p], minlength=10).max() / len(p) for p in parts])

    skews = [skew(a) for a in (100.0, 1.0, 0.1)]
    assert skews[0] < skews[1] < skews[2]
    assert skews[0] < 0.2 and skews[2] > 0.6


def test_dirichlet_tiny_alpha_many_clients_terminates_with_minimum():
    parts = dirichlet_partition(LABELS, 150, 0.01, 12, rng_for(0, 2), max_tries=5)
    _assert_exact_cover(parts, len(LABELS))
    assert min(len(p) for p in parts) >= 12


def test_partition_is_deterministic_per_seed():
    a = dirichlet_partition(LABELS, 8, 0.3, 10, rng_for(1, 2))
    b = dirichlet_partition(LABELS, 8, 0.3, 10, rng_for(1, 2))
    c = dirichlet_partition(LABELS, 8, 0.3, 10, rng_for(2, 2))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_train_test_split_is_disjoint_and_covers_each_client():
    parts = iid_partition(LABELS, 5, rng_for(0, 2))
    train, test = split_train_test(parts, 0.25, rng_for(0, 3))
    for p, tr, te in zip(parts, train, test):
        assert len(np.intersect1d(tr, te)) == 0
        assert np.array_equal(np.sort(np.concatenate([tr, te])), p)
        assert len(te) == round(0.25 * len(p))


def test_stratified_subset_keeps_class_proportions():
    labels = np.concatenate([np.zeros(1000, int), np.ones(100, int)])
    keep = stratified_subset(labels, 0.1, rng_for(0, 1))
    assert np.bincount(labels[keep]).tolist() == [100, 10]


def test_federated_data_is_fixed_by_seed_and_split_once(synthetic_cfg):
    a = build_federated_data(synthetic_cfg("seed=3"))
    b = build_federated_data(synthetic_cfg("seed=3"))
    c = build_federated_data(synthetic_cfg("seed=4"))
    assert a.fingerprint == b.fingerprint != c.fingerprint
    for i in range(a.num_clients):
        for split in ("train", "val", "test"):
            assert all(torch.equal(x[i], y[i]) for x, y in zip(a.split(split), b.split(split))), split
    assert sum(a.train_sizes) + sum(a.val_sizes) + sum(a.test_sizes) == 1000  # synthetic: 10 classes x 100


def test_validation_split_is_disjoint_from_train_and_test_and_carved_from_train(synthetic_cfg):
    def images(xs):  # synthetic images are continuous noise: each one is unique, so bytes identify it
        return {x.numpy().tobytes() for x in xs}

    data = build_federated_data(synthetic_cfg("seed=3", "partition.val_fraction=0.2"))
    before = build_federated_data(synthetic_cfg("seed=3", "partition.val_fraction=0.1"))
    seen = set()
    for i in range(data.num_clients):
        train, val, test = (images(data.split(s)[0][i]) for s in ("train", "val", "test"))
        assert train.isdisjoint(val) and train.isdisjoint(test) and val.isdisjoint(test)
        assert len(val) == round(0.2 * (len(train) + len(val)))  # a fraction of the train share
        # The test split does not depend on val_fraction: validation is carved from train only.
        assert test == images(before.test_x[i]) and train | val == images(before.train_x[i]) | images(before.val_x[i])
        assert seen.isdisjoint(train | val | test)
        seen |= train | val | test
    assert len(seen) == 1000


def test_infeasible_client_count_is_a_clear_config_error(synthetic_cfg):
    with pytest.raises(ConfigError, match=r"federation.num_clients=200.*dataset.fraction"):
        build_federated_data(synthetic_cfg("federation.num_clients=200"))
