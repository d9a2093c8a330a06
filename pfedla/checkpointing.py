"""Checkpoints that never corrupt a run: atomic writes, safe loads, resume-compatibility checks.

What makes resume exact is elsewhere by design: all server state is module state (client models,
BN statistics, hypernetworks and their optimizer buffers), the history rides in the checkpoint,
and every random draw is a pure function of (seed, round, client), so no RNG state needs saving.
"""

from __future__ import annotations

import copy
import io
import signal
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from pfedla.errors import ConfigError
from pfedla.outputs import atomic_write_bytes

# Config keys that define the federation: resuming with any of them changed would silently mix two
# experiments, so it is refused. Everything else (rounds, eval_every, logger, trainer, viz) may change.
FEDERATION_KEYS = (
    "seed", "federation.num_clients", "federation.participation", "federation.unseen_fraction", "client", "partition",
    "model", "algorithm",
    "dataset._target_", "dataset.name", "dataset.fraction", "dataset.num_classes", "dataset.samples_per_class",
    "dataset.image_size", "dataset.noise", "dataset.split", "dataset.test_images", "dataset.test_samples_per_class",
)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temp file and rename (a crash mid-write leaves the last good checkpoint); load tensors only."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buffer.getvalue())

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        return load_checkpoint(path, map_location)


def load_checkpoint(path: str | Path, map_location=None) -> dict:
    """``torch.load(weights_only=True)``: a checkpoint can hold tensors and plain data, never code."""
    try:
        checkpoint = torch.load(path, map_location=map_location or "cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"resume: no checkpoint at {path}") from None
    except Exception as err:  # UnpicklingError (foreign/unsafe objects), RuntimeError/EOFError (truncated)
        kind = "holds objects other than tensors and plain data" if "weights_only" in str(err) else (
            "is truncated or not a PyTorch checkpoint")
        raise ConfigError(
            f"resume: checkpoint {path} {kind} ({type(err).__name__}); it was not loaded. Resume from a checkpoint "
            "written by pfedla, or start a new run without resume="
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "pfedla_config" not in checkpoint:
        raise ConfigError(f"resume: {path} is not a pfedla checkpoint (no pfedla_config); nothing was loaded")
    return checkpoint


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


class RoundCheckpoint(L.Callback):
    """Write ``last.ckpt`` between rounds: every ``every`` rounds, after the last round, and right after
    the round in progress when SIGTERM/SIGINT arrives (then stop cleanly; resume continues from there).

    Lightning's ModelCheckpoint keys its schedule on optimizer steps, which manual optimisation
    without optimizers never takes, so rounds are counted here.
    """

    def __init__(self, path: Path, every: int):
        self.path, self.every, self.requested, self.previous = Path(path), every, None, {}

    def on_train_start(self, trainer, module) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self.previous[sig] = signal.signal(sig, self._request)
            except ValueError:  # not the main thread: leave signals alone
                pass

    def _request(self, signum, frame) -> None:
        self.requested = signum

    def on_train_epoch_end(self, trainer, module) -> None:
        round_idx = module.round
        # With several ranks the signal may reach only some: all stop after the same round.
        requested = module.ranks.max_int(self.requested or 0, module.device)
        if requested or round_idx % self.every == 0 or round_idx == trainer.max_epochs:
            module.check_ranks_agree(f"after round {round_idx}")  # replicas must not have drifted apart
            trainer.save_checkpoint(self.path, weights_only=False)  # full state: loops too, not weights only
        if requested:
            trainer.should_stop = True
            module.stopped_by_signal = requested

    def on_train_end(self, trainer, module) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()
