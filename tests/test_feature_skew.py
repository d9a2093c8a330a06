"""Feature skew (pfedla/datasets/feature_skew.py) and quantity skew: each transform on a hand-made image,
seeded group assignment, exact cover of the pool by a mixed partition, and runs on top of them."""

import hashlib
import json
import math

import numpy as np
import pytest
import torch

from pfedla.algorithms.alpha_stats import alpha_statistics
from pfedla.compatibility import check_resume_compatible
from pfedla.datasets import build_federated_data
from pfedla.datasets.feature_skew import assign_groups, gaussian_blur, transform
from pfedla.datasets.partition import (
    client_weights,
    dirichlet_partition,
    iid_partition,
    pathological_partition,
    rng_for,
)
from pfedla.datasets.sources import load_pooled
from pfedla.errors import ConfigError
from pfedla.run import run

NO_NOISE = torch.Generator().manual_seed(0)


def marked(h=4, w=4, row=0, col=3, channels=1):
    image = torch.zeros(1, channels, h, w)
    image[0, :, row, col] = 1.0
    return image


@pytest.mark.parametrize("group, where", [(1, (0, 0)), (2, (3, 0)), (3, (3, 3))])
def test_rotation_by_group_times_90_degrees_moves_the_marked_pixel(group, where):
    # The top-right pixel of a 4x4 image, turned counter-clockwise: 90 -> top-left, 180 -> bottom-left,
    # 270 -> bottom-right.
    out = transform(marked(), "rotation", group, 0.0, NO_NOISE)
    assert out.sum() == 1 and out[0, 0, where[0], where[1]] == 1


def test_group_zero_keeps_its_images_and_invert_mirrors_about_the_pool_mean():
    x = torch.randn(3, 1, 5, 5)
    for feature in ("rotation", "invert", "noise", "blur"):
        assert torch.equal(transform(x, feature, 0, 1.0, NO_NOISE), x)
    assert torch.equal(transform(x, "invert", 1, 0.0, NO_NOISE), -x)  # standardised images: mean 0


def test_noise_has_std_group_times_level_and_is_the_same_for_the_same_stream():
    x = torch.zeros(200, 1, 16, 16)
    for group, level in ((2, 0.5), (1, 0.5), (3, 0.2)):  # std = group x level: 1.0, 0.5, 0.6
        out = transform(x, "noise", group, level, torch.Generator().manual_seed(7))
        assert out.std().item() == pytest.approx(group * level, rel=0.02), (group, level)
        assert out.mean().item() == pytest.approx(0.0, abs=0.01 * group * level)
    assert torch.equal(out, transform(x, "noise", 3, 0.2, torch.Generator().manual_seed(7)))


def test_blur_spreads_one_pixel_as_a_normalised_gaussian_and_keeps_a_flat_image():
    sigma = 1.0
    out = gaussian_blur(marked(9, 9, 4, 4), sigma)
    radius = math.ceil(3 * sigma)
    g = [math.exp(-0.5 * (d / sigma) ** 2) for d in range(-radius, radius + 1)]
    g = [v / sum(g) for v in g]  # the 1-d kernel by hand
    assert out[0, 0, 4, 4].item() == pytest.approx(g[radius] ** 2)
    assert out[0, 0, 4, 5].item() == pytest.approx(g[radius] * g[radius + 1])
    assert out[0, 0, 2, 6].item() == pytest.approx(g[radius - 2] * g[radius + 2])
    assert out.sum().item() == pytest.approx(1.0)
    flat = torch.full((1, 2, 6, 6), 0.7)
    assert torch.allclose(gaussian_blur(flat, 2.0), flat)


def test_colour_groups_permute_the_channels():
    x = torch.stack([torch.full((2, 2), float(c)) for c in range(3)]).unsqueeze(0)  # channel c holds c
    out = transform(x, "colour", 1, 0.0, NO_NOISE)  # the second permutation of (0, 1, 2): (0, 2, 1)
    assert [out[0, c, 0, 0].item() for c in range(3)] == [0.0, 2.0, 1.0]


def test_groups_are_balanced_seeded_and_explicit_when_given():
    a = assign_groups(10, 4, rng_for(3, 8))
    assert sorted(np.bincount(a).tolist()) == [2, 2, 3, 3]
    assert a == assign_groups(10, 4, rng_for(3, 8)) and a != assign_groups(10, 4, rng_for(4, 8))
    assert assign_groups(3, 2, rng_for(0, 8), group_of=[1, 0, 1]) == [1, 0, 1]


def _pool_index(pooled):
    return {hashlib.sha1(img.numpy().tobytes()).hexdigest(): i for i, img in enumerate(pooled.images)}


@pytest.mark.parametrize("extra", [["partition.quantity=none"], ["partition.quantity=zipf"]])
def test_rotation_groups_times_dirichlet_cover_every_sample_exactly_once(synthetic_cfg, extra):
    cfg = synthetic_cfg("federation.num_clients=8", "partition.alpha=0.3", "partition.feature=rotation",
                        "partition.groups=4", *extra)
    data = build_federated_data(cfg)
    pooled = load_pooled(cfg.dataset, cfg.seed)
    index = _pool_index(pooled)
    seen = []
    for client, group in enumerate(data.groups):
        for split in ("train", "val", "test"):
            xs, ys = data.split(split)
            undone = torch.rot90(xs[client], k=-group, dims=(2, 3))  # rotations are exact: undo them
            ids = [index[hashlib.sha1(img.contiguous().numpy().tobytes()).hexdigest()] for img in undone]
            assert torch.equal(pooled.labels[ids], ys[client])
            seen += ids
    assert sorted(seen) == list(range(len(pooled.labels)))  # every sample once, none twice
    assert sorted(np.bincount(data.groups).tolist()) == [2, 2, 2, 2]


def test_groups_are_part_of_the_fingerprint_and_the_partition_files(synthetic_cfg):
    plain = build_federated_data(synthetic_cfg())
    rotated = build_federated_data(synthetic_cfg("partition.feature=rotation", "partition.groups=2"))
    again = build_federated_data(synthetic_cfg("partition.feature=rotation", "partition.groups=2"))
    other = build_federated_data(synthetic_cfg("partition.feature=rotation", "partition.groups=2",
                                               "partition.group_of=[1,1,0,0]"))
    assert plain.groups is None and plain.summary()["groups"] is None
    assert rotated.groups == again.groups and rotated.fingerprint == again.fingerprint != plain.fingerprint
    assert other.groups == [1, 1, 0, 0]
    assert (other.fingerprint == rotated.fingerprint) == (rotated.groups == [1, 1, 0, 0])
    assert rotated.summary()["groups"] == rotated.groups and rotated.summary()["feature"] == "rotation"
    # the label split itself is the one without feature skew
    assert [torch.equal(a, b) for a, b in zip(plain.train_y, rotated.train_y)] == [True] * 4


def test_quantity_skew_sizes_follow_the_drawn_weights():
    weights = client_weights(5, "zipf", 1.0, rng_for(0, 7))
    ranks = np.argsort(-weights)
    assert weights[ranks] == pytest.approx(np.array([1, 1 / 2, 1 / 3, 1 / 4, 1 / 5]) / sum(1 / k for k in range(1, 6)))
    labels = np.repeat(np.arange(4), 500)
    sizes = [len(p) for p in iid_partition(labels, 5, rng_for(0, 2), weights)]
    assert sizes == pytest.approx(weights * len(labels), abs=1)
    for parts in (dirichlet_partition(labels, 5, 0.5, 10, rng_for(0, 2), weights=weights),
                  pathological_partition(labels, 5, 2, rng_for(0, 2), weights)):
        assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(labels)))
    lognormal = client_weights(200, "lognormal", 1.0, rng_for(0, 7))
    assert np.log(lognormal).std() == pytest.approx(1.0, rel=0.15)
    assert client_weights(5, "none", 1.0, rng_for(0, 7)) is None


def test_alpha_within_and_across_groups_by_hand():
    counts = [[1, 1]] * 3  # same labels everywhere: only the groups differ
    alpha = np.array([[[0.5, 0.4, 0.1]], [[0.3, 0.6, 0.1]], [[0.2, 0.2, 0.6]]])  # [N, L=1, N]
    layer = alpha_statistics(alpha, ["conv1"], counts, groups=[0, 0, 1])["layers"]["conv1"]
    assert layer["same_group_peer"] == pytest.approx((0.4 + 0.3) / 2)  # (0,1), (1,0)
    assert layer["other_group_peer"] == pytest.approx((0.1 + 0.1 + 0.2 + 0.2) / 4)
    assert layer["same_group"] == pytest.approx((0.9 + 0.9 + 0.6) / 3)
    assert "same_group_peer" not in alpha_statistics(alpha, ["conv1"], counts)["layers"]["conv1"]



def test_a_checkpoint_from_before_feature_skew_resumes_under_todays_defaults():
    saved = {"partition": {"name": "dirichlet", "alpha": 0.3}}
    today = {"partition": {"name": "dirichlet", "alpha": 0.3, "feature": "none", "groups": 4, "group_of": None,
                           "feature_level": None, "quantity": "none", "quantity_scale": 1.0}}
    check_resume_compatible(saved, today)
    with pytest.raises(ConfigError, match="partition.feature: 'none' -> 'rotation'"):
        check_resume_compatible(saved, {"partition": {**today["partition"], "feature": "rotation"}})


def test_a_rotation_group_run_reports_groups_and_resumes_with_the_same_ones(synthetic_cfg, tmp_path):
    skew = ("partition.feature=rotation", "partition.groups=2", "federation.adapt_every=0")
    first = run(synthetic_cfg("federation.rounds=1", *skew), tmp_path)
    resumed = run(synthetic_cfg("federation.rounds=2", *skew, f"resume={tmp_path}"), tmp_path)
    assert resumed["partition_fingerprint"] == first["partition_fingerprint"]
    groups = json.loads((tmp_path / "partition.json").read_text())["groups"]
    assert sorted(groups) == [0, 0, 1, 1]
    by_group = resumed["final"]["spread_by_group"]
    assert set(by_group) == {"0", "1"} and all(g["clients"] == 2 for g in by_group.values())
    layers = resumed["alpha_stats"]["layers"]
    assert all({"same_group_peer", "other_group_peer", "same_group"} <= set(s) for s in layers.values())
