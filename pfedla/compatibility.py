"""Which config changes keep a run the same run. A resume, or a SuperNode joining a deployment, may change how a
run is carried out (rounds, logging, the trainer), never the federation it trains: the keys that define it are
compared leaf by leaf, and a config from before a key existed counts as having its old value. No Lightning here,
so a deployment's ClientApp process (one a message) does not pay for importing it."""

from __future__ import annotations

import copy

from pfedla.errors import ConfigError

# Config keys that define the federation: resuming with any of them changed would silently mix two
# experiments, so it is refused. Everything else (rounds, eval_every, logger, trainer, viz) may change.
FEDERATION_KEYS = (
    "seed", "federation.num_clients", "federation.participation", "federation.unseen_fraction", "client", "partition",
    "model", "algorithm",
    "dataset._target_", "dataset.name", "dataset.fraction", "dataset.num_classes", "dataset.samples_per_class",
    "dataset.image_size", "dataset.noise", "dataset.split", "dataset.test_images", "dataset.test_samples_per_class",
)


# Keys added to the config after runs were checkpointed: an older checkpoint lacks them and ran as if
# they had these values (the behaviour before they existed), so it still resumes under today's defaults.
ADDED_KEYS = {
    "partition.feature": "none", "partition.groups": 4, "partition.group_of": None,
    "partition.feature_level": None, "partition.quantity": "none", "partition.quantity_scale": 1.0,
    "federation.unseen_fraction": 0.0, "federation.unseen_rounds": 10,
    "dataset.test_images": "pooled", "objective": "personalized",
}
# Keys added to one kind of node only: (the key, its value from before it existed, a key only that kind has).
# pFedLA's and HeurpFedLA's algorithm nodes (those with ``k``) learned alpha before ``alpha`` existed.
ADDED_BESIDE = (("algorithm.alpha", "learned", "k"),)


def with_added_keys(config: dict) -> dict:
    """``config`` with every key of ADDED_KEYS it lacks set to its value from before the key existed."""
    config = copy.deepcopy(config)
    for dotted, value in ADDED_KEYS.items():
        *parents, leaf = dotted.split(".")
        node = config
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf not in node:
            node[leaf] = value
    for dotted, value, beside in ADDED_BESIDE:
        *parents, leaf = dotted.split(".")
        node = _select(config, ".".join(parents))
        if isinstance(node, dict) and beside in node and leaf not in node:
            node[leaf] = value
    return config


def check_resume_compatible(saved: dict, current: dict) -> None:
    """Refuse to continue a run under a config that changes the federation; name every differing key."""
    saved = with_added_keys(saved)
    for group in ("algorithm", "model", "dataset", "partition"):
        node = saved.get(group)
        if isinstance(node, dict) and "_target_" not in node:
            # from before they were built from _target_: their name chose the class (the name is still compared)
            node["_target_"] = _select(current, f"{group}._target_")
    differing = federation_differences(saved, current)
    if differing:
        raise ConfigError(
            "resume: the config changes the federation of the checkpointed run: " + "; ".join(differing)
            + ". Use the original values (only rounds, eval_every, logger, trainer, checkpoint, viz may change)"
        )


def federation_differences(before: dict, after: dict) -> list[str]:
    """"key: before -> after" for every leaf of FEDERATION_KEYS that differs between two resolved configs."""
    return [d for key in FEDERATION_KEYS if _select(before, key) != _select(after, key)
            for d in _diff(_select(before, key), _select(after, key), key)]


def _select(cfg: dict, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _diff(before, after, key: str) -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        return [d for k in sorted(set(before) | set(after)) for d in _diff(before.get(k), after.get(k), f"{key}.{k}")
                if before.get(k) != after.get(k)]
    return [f"{key}: {before!r} -> {after!r}"]
