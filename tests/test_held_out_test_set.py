"""``dataset.test_images``: a test set no search touches, by construction, checked image by image."""

import hashlib

import numpy as np
import pytest
import torch

from pfedla.datasets.federated import build_federated_data
from pfedla.datasets.partition import deal_by_label
from pfedla.errors import ConfigError
from pfedla.validate import validate_config
from tests.conftest import compose_config

SYNTHETIC = ["dataset=synthetic", "dataset.test_samples_per_class=30", "federation.num_clients=4", "logger=none"]
# The three label-skew splits of the benchmark (conf/benchmark/fmnist.yaml).
SPLITS = {
    "dirichlet0.3": ["partition=dirichlet", "partition.alpha=0.3", "dataset.fraction=1.0"],
    "pathological2": ["partition=pathological", "partition.classes_per_client=2", "dataset.fraction=0.25"],
    "dirichlet0.1": ["partition=dirichlet", "partition.alpha=0.1", "dataset.fraction=0.25"],
}
# The search proxy: a stratified part of the train images, the test images never read.
PROXY = ["dataset.test_images=unused", "dataset.fraction=0.25", "partition=dirichlet", "partition.alpha=0.3"]


def _hashes(images: list[torch.Tensor]) -> set[str]:
    return {hashlib.sha256(x.numpy().tobytes()).hexdigest() for xs in images for x in xs}


def _loaded(data) -> set[str]:
    """Every image a run loads into its federation: train, validation and test splits."""
    return _hashes(data.train_x) | _hashes(data.val_x) | _hashes(data.test_x)


def test_held_out_test_splits_are_the_datasets_own_test_images_dealt_by_label():
    data = build_federated_data(compose_config([*SYNTHETIC, "dataset.test_images=held_out"]))
    source = compose_config([*SYNTHETIC, "dataset.test_images=held_out"]).dataset
    from pfedla.datasets.sources import build_source

    pooled = build_source(source).load_parts(0, with_test=True)
    own_test = _hashes([pooled.images[pooled.test_start:]])
    own_train = _hashes([pooled.images[: pooled.test_start]])
    assert _hashes(data.test_x) <= own_test and len(_hashes(data.test_x)) == 300  # all 10 x 30, each once
    assert (_hashes(data.train_x) | _hashes(data.val_x)) <= own_train
    for train, val, test in zip(data.train_y, data.val_y, data.test_y):
        share = torch.bincount(torch.cat([train, val]), minlength=10).double()
        dealt = torch.bincount(test, minlength=10).double()
        # each class's 30 test images split by the clients' shares of it: within one image of proportional
        totals = sum(torch.bincount(torch.cat([t, v]), minlength=10) for t, v in zip(data.train_y, data.val_y))
        assert torch.all((dealt - 30 * share / totals).abs() < 1)


def test_unused_never_reads_the_test_images_and_pooled_mixes_them_in():
    cfg = compose_config([*SYNTHETIC, "dataset.test_images=held_out"])
    final = build_federated_data(cfg)
    search = build_federated_data(compose_config([*SYNTHETIC, "dataset.test_images=unused"]))
    assert not _loaded(search) & _hashes(final.test_x)
    assert final.fingerprint != search.fingerprint
    pooled = build_federated_data(compose_config([*SYNTHETIC, "dataset.test_images=pooled"]))
    assert sum(pooled.train_sizes) + sum(pooled.val_sizes) + sum(pooled.test_sizes) == 10 * (100 + 30)


def test_deal_by_label_follows_each_clients_label_counts_and_leaves_no_client_without_a_test_image():
    labels = np.repeat(np.arange(3), 10)  # 10 test images of each of 3 classes
    counts = [[6, 0, 0], [3, 3, 0], [0, 1, 9], [1, 0, 0]]  # client 3: one image of class 0
    dealt = deal_by_label(labels, counts, np.random.default_rng(0))
    assert sorted(np.concatenate(dealt).tolist()) == list(range(30))  # every test image exactly once
    by_class = [np.bincount(labels[d], minlength=3).tolist() for d in dealt]
    # class 0: 10 x (6, 3, 0, 1)/10 = (6, 3, 0, 1); class 1: 10 x (0, 3, 1, 0)/4 = (0, 7.5, 2.5, 0) -> 8, 2 or 7, 3
    assert by_class[0] == [6, 0, 0] and by_class[3] == [1, 0, 0]
    assert by_class[1][0] == 3 and by_class[1][1] + by_class[2][1] == 10 and abs(by_class[1][1] - 7.5) == 0.5
    assert by_class[2][2] == 10
    # class 0's one test image goes to client 0 (quotas 0.95, 0.05, 0), class 1's three to client 2 (0, 0.27, 2.73):
    # client 1 is left with none; client 0 cannot give its only image, so client 1 gets one of class 1 from client 2
    labels = np.array([0, 1, 1, 1])
    starved = deal_by_label(labels, [[20, 0], [1, 1], [0, 10]], np.random.default_rng(0))
    assert [sorted(labels[d].tolist()) for d in starved] == [[0], [1], [1, 1]]
    with pytest.raises(ConfigError, match=r"client 1 gets no test image of the classes it holds"):
        deal_by_label(np.array([0]), [[2, 0], [1, 0]], np.random.default_rng(0))


def test_a_dataset_without_its_own_test_set_cannot_hold_one_out():
    with pytest.raises(ConfigError, match=r"dataset=synthetic has no test set of its own .*test_samples_per_class"):
        build_federated_data(compose_config(["dataset=synthetic", "dataset.test_images=held_out"]))
    without = build_federated_data(compose_config(["dataset=synthetic", "dataset.test_images=unused"]))
    assert sum(without.train_sizes) + sum(without.val_sizes) + sum(without.test_sizes) == 1000  # nothing to leave out
    with pytest.raises(ConfigError, match=r"^dataset.test_images=heldout is unknown"):
        validate_config(compose_config(["dataset=synthetic", "dataset.test_images=heldout"]))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_no_final_test_image_of_any_split_is_loaded_by_a_search_trial_on_fashion_mnist(seed):
    common = ["dataset=fmnist", "federation.num_clients=20", "logger=none", f"seed={seed}"]
    searched = _loaded(build_federated_data(compose_config([*common, *PROXY])))
    whole_train = _loaded(build_federated_data(compose_config([*common, *PROXY[:1], "dataset.fraction=1.0"])))
    assert len(whole_train) == 60_000  # a search at any fraction loads only Fashion-MNIST's 60k train images
    assert searched <= whole_train
    for split, overrides in SPLITS.items():
        final = build_federated_data(compose_config([*common, *overrides, "dataset.test_images=held_out"]))
        tested = _hashes(final.test_x)
        assert len(tested) == sum(final.test_sizes), split  # distinct images
        assert not tested & whole_train, split
        assert not (_hashes(final.train_x) | _hashes(final.val_x)) & tested, split
