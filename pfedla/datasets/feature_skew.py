"""Feature skew: the same labels, different inputs. Clients fall into groups, and every image a client
holds (train, validation and test alike) goes through its group's fixed, deterministic transform.

Group 0 always keeps the images as they are; group g is g steps away from them:

- ``rotation``: turned by g x 90 degrees (at most 4 groups; square images);
- ``invert``: group 1 has its intensities mirrored about the pool mean (images are standardised, so
  that is x -> -x; at most 2 groups);
- ``noise``: fixed Gaussian noise of std g x level (in units of the pool's std; default level 0.5),
  drawn once per image from the run seed, so every round sees the same noisy image;
- ``blur``: a Gaussian blur of sigma g x level pixels (default level 1.0), edge pixels repeated outwards;
- ``colour``: the colour channels permuted by the g-th permutation of (R, G, B) (colour images only,
  at most 6 groups).

Clients are assigned to groups by ``partition.group_of`` (one group per client) or, when it is null, by
a seeded shuffle dealt round-robin (group sizes differ by at most one). Everything is a pure function
of the config and the seed, so a resumed run rebuilds the very same groups (the partition fingerprint
covers them).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
import torch.nn.functional as F

from pfedla.errors import ConfigError

FEATURES = ("none", "rotation", "invert", "noise", "blur", "colour")
MAX_GROUPS = {"rotation": 4, "invert": 2, "colour": 6}
DEFAULT_LEVEL = {"noise": 0.5, "blur": 1.0}
CHANNEL_ORDERS = list(itertools.permutations(range(3)))


def assign_groups(num_clients: int, groups: int, rng: np.random.Generator, group_of=None) -> list[int]:
    """Each client's group: ``group_of`` as given, else a seeded shuffle dealt round-robin."""
    if group_of is not None:
        return [int(g) for g in group_of]
    order = rng.permutation(num_clients)
    assigned = np.empty(num_clients, dtype=int)
    assigned[order] = np.arange(num_clients) % groups
    return assigned.tolist()


def level_of(feature: str, level: float | None) -> float:
    return DEFAULT_LEVEL.get(feature, 0.0) if level is None else float(level)


def transform(images: torch.Tensor, feature: str, group: int, level: float, generator: torch.Generator) -> torch.Tensor:
    """``images`` [n, C, H, W] as group ``group`` of ``feature`` sees them (group 0: ``images`` themselves)."""
    if group == 0 or feature == "none":
        return images
    if feature == "rotation":
        return torch.rot90(images, k=group, dims=(2, 3)).contiguous()
    if feature == "invert":
        return -images
    if feature == "noise":
        noise = torch.randn(images.shape, generator=generator, dtype=images.dtype)
        return images + group * level * noise
    if feature == "blur":
        return gaussian_blur(images, group * level)
    if feature == "colour":
        return images[:, list(CHANNEL_ORDERS[group])].contiguous()
    raise ConfigError(f"partition.feature={feature} is unknown; valid: {', '.join(FEATURES)}")


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur, kernel radius ceil(3 sigma), edge pixels repeated outwards, each channel on its own."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = images.shape[1]
    padded = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(rows, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def check_feature(cfg, num_clients: int, input_shape: tuple[int, ...], source: str) -> None:
    """Rules that need the dataset's shape; raised after loading, before anything is partitioned."""
    feature = cfg.feature
    if feature == "none":
        return
    channels, height, width = input_shape
    if feature == "colour" and channels < 3:
        raise ConfigError(f"partition.feature=colour needs colour images, but {source} has {channels} channel; "
                          "use partition.feature=rotation|invert|noise|blur, or a colour dataset (dataset=cifar10)")
    if feature == "rotation" and height != width:
        raise ConfigError(f"partition.feature=rotation needs square images, but {source} has {height}x{width}; "
                          "use partition.feature=invert|noise|blur")
    if cfg.group_of is not None and len(cfg.group_of) != num_clients:
        raise ConfigError(f"partition.group_of has {len(cfg.group_of)} entries for federation.num_clients="
                          f"{num_clients}; give one group per client, or partition.group_of=null")
    groups = cfg.groups
    if cfg.group_of is not None:
        bad = [g for g in cfg.group_of if not 0 <= g < groups]
        if bad:
            raise ConfigError(f"partition.group_of holds {bad[0]}, outside 0..partition.groups-1={groups - 1}; "
                              "number the groups from 0")
