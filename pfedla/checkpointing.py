"""Checkpoints that never corrupt a run: atomic writes and safe loads (which configs may resume one:
pfedla/compatibility.py).

What makes resume exact is elsewhere by design: all server state is module state (client models,
BN statistics, hypernetworks and their optimizer buffers), the history rides in the checkpoint,
and every random draw is a pure function of (seed, round, client), so no RNG state needs saving.
"""

from __future__ import annotations

import io
import signal
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from pfedla.errors import ConfigError
from pfedla.outputs import atomic_write_bytes


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
