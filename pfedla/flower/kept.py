"""What a SuperNode keeps of its clients' own models (ClientModel.kept, .held).

A method that keeps tensors on the client (FedPer's head, LG-FedAvg's body, FedBN's BatchNorm, HeurpFedLA's
retained layers, all of Local's, Ditto's and APFL's second models, FedRoD's personal head, pFedMe's personal
weights, the BatchNorm statistics no server aggregates) is sent its model without them, and uploads it without
them; a method whose client's own model the server reads (FedAMP, FedALA, FedFomo: held) is sent its model without
it, and uploads it trained. The node fills them in from its last accepted training, which it keeps as one file per
(client, version) under its state directory (``--node-config state-dir=...``), so a SuperNode that restarts
recovers them, and a run resumed from its last checkpoint finds the versions that checkpoint expects. A version is
the round of the client's last accepted local training (0: none yet, the run's initial model, which every node
builds from the seed).

The server says which version it expects; a version the node does not hold (its state directory was lost or
belongs to another node) is one clear error naming the client, never a silent stand-in.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import torch

from pfedla.algorithms.stacked import ClientModel
from pfedla.outputs import atomic_write_bytes
from pfedla.transport import all_finite


class KeptMissing(RuntimeError):
    """A node asked for a version of a client's own tensors it does not hold."""


class KeptStore:
    """Versions of each client's own model (params and buffers) on this node's disk, one run's."""

    def __init__(self, root: Path, run_key: str):
        self.dir = Path(root) / run_key

    @staticmethod
    def run_key(run_dir: str, fingerprint: str) -> str:
        """A run's key: its run dir (the same on resume) and the partition it trains on."""
        return hashlib.sha256(f"{run_dir}\0{fingerprint}".encode()).hexdigest()[:16]

    def _path(self, client: int, version: int) -> Path:
        return self.dir / f"client{client}" / f"round{version}.pt"

    def versions(self, client: int) -> list[int]:
        folder = self.dir / f"client{client}"
        return sorted(int(p.stem[len("round"):]) for p in folder.glob("round*.pt")) if folder.is_dir() else []

    def save(self, client: int, version: int, model: ClientModel) -> None:
        cpu = lambda tensors: {n: t.detach().cpu().contiguous() for n, t in tensors.items()}
        buffer = io.BytesIO()
        torch.save({"params": cpu(model.params), "buffers": cpu(model.buffers)}, buffer)
        path = self._path(client, version)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buffer.getvalue())

    def load(self, client: int, version: int) -> ClientModel:
        path = self._path(client, version)
        if not path.is_file():
            held = self.versions(client)
            raise KeptMissing(
                f"client {client}'s own layers as of round {version} are not on this SuperNode (it holds "
                f"{'rounds ' + ', '.join(map(str, held)) if held else 'none'} under {self.dir}): its state directory "
                "(--node-config state-dir) was lost or belongs to another node. Start it with the state directory "
                "it used, or begin a new run")
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return ClientModel(saved["params"], saved["buffers"])

    def prune(self, client: int, keep_from: int) -> None:
        """Drop the versions older than ``keep_from``, the one the server's last checkpoint expects."""
        for version in self.versions(client):
            if version < keep_from:
                self._path(client, version).unlink(missing_ok=True)


def settle(store: KeptStore, client: int, round_idx: int, trained: ClientModel, loss: torch.Tensor,
           keep_from: int) -> torch.Tensor:
    """After ``client`` trained in ``round_idx`` on this node: the loss to report. A result the server will
    accept (``all_finite``, its rule) becomes the client's version ``round_idx`` (the whole trained model, as a
    method may keep other layers next round, its kept tensors under the client's own names over the others:
    ClientModel.own_name), and versions older than
    ``keep_from`` go; one it will reject is not kept, and its loss is made NaN, so the server rejects it whichever
    part (sent or kept) was not finite, and the client's own copy stays where it was, as on a simulated server."""
    if bool(all_finite(trained.params, trained.buffers, loss)):
        own = lambda tensors: ({n: t for n, t in tensors.items() if n not in trained.kept}
                               | {trained.own_name(n): t for n, t in tensors.items() if n in trained.kept})
        store.save(client, round_idx, ClientModel(own(trained.params), own(trained.buffers)))
        store.prune(client, keep_from)
        return loss
    return torch.full_like(loss, float("nan"))
