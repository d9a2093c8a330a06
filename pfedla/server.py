"""The LightningModule that runs federated rounds: one training step (and one epoch) == one round.

Lightning gives the loop, progress bar, loggers and checkpoints; the round itself is plain tensor
work: sample clients, send ``algorithm.model_for(i)``, train with ``client_trainer`` starting from
exactly that, ``algorithm.receive``, then ``algorithm.end_round``. Resume is clean because every
round boundary is an epoch boundary and all randomness is a function of (seed, round, client).
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.functional.classification import multiclass_accuracy

from pfedla.algorithms.base import Algorithm
from pfedla.algorithms.stacked import ClientModel
from pfedla.client import client_generator, predict, train_client
from pfedla.data import FederatedData
from pfedla.outputs import write_metrics_csv
from pfedla.sampling import sample_clients

log = logging.getLogger("pfedla")


def _all_finite(loss: torch.Tensor, *tensor_dicts: dict) -> bool:
    checks = [torch.isfinite(loss).all()] + [torch.isfinite(t).all() for d in tensor_dicts for t in d.values()
                                             if t.is_floating_point()]
    return bool(torch.stack(checks).all())


class FederatedModule(L.LightningModule):
    def __init__(self, model: nn.Module, algorithm: Algorithm, data: FederatedData, cfg, run_dir=None):
        super().__init__()
        self.automatic_optimization = False  # the algorithm owns every update
        self.arch = [model]  # architecture only (functional_call swaps in each client's tensors); not state
        self.algorithm = algorithm
        self.data = data
        self.cfg = cfg
        self.run_dir = run_dir  # where metrics.csv is kept current; None: nowhere
        self.client_trainer = train_client  # the seam tests use to observe what a client starts from
        self.client_progress = lambda done, total: None  # set by the progress display
        self.history: list[dict] = []  # one record per evaluation round
        self.stopped_by_signal = 0  # set by RoundCheckpoint
        self.rejected: list[list[int]] = []  # [round, client] of updates with NaN/Inf, never applied
        self._round_losses: list[torch.Tensor] = []

    @property
    def model(self) -> nn.Module:
        return self.arch[0]

    # --- Lightning plumbing -----------------------------------------------------------------------
    def configure_optimizers(self):
        return None

    def train_dataloader(self):
        return DataLoader([0], batch_size=None)  # one step per epoch: the epoch is the round

    def on_fit_start(self) -> None:
        self.data = self.data.to(self.device)
        self.model.to(self.device)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["pfedla_history"] = self.history
        checkpoint["pfedla_rejected"] = self.rejected
        checkpoint["pfedla_config"] = OmegaConf.to_container(self.cfg, resolve=True)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint.get("pfedla_history", []))
        self.rejected = list(checkpoint.get("pfedla_rejected", []))

    # --- one round --------------------------------------------------------------------------------
    @property
    def round(self) -> int:
        return self.current_epoch + 1  # 1-based

    def training_step(self, batch, batch_idx):
        fed, cl = self.cfg.federation, self.cfg.client
        sampled = sample_clients(self.cfg.seed, self.round, self.data.num_clients, fed.participation)
        self.algorithm.begin_round(sampled)
        for done, i in enumerate(sampled):
            self.client_progress(done, len(sampled))
            sent = self.algorithm.model_for(i)
            params, buffers, loss = self.client_trainer(
                self.model, sent.params, sent.buffers, self.data.train_x[i], self.data.train_y[i],
                epochs=cl.epochs, batch_size=cl.batch_size, lr=cl.lr, momentum=cl.momentum,
                weight_decay=cl.weight_decay, generator=client_generator(self.cfg.seed, self.round, i),
            )
            if not _all_finite(loss, params, buffers):
                self._reject(i)
                continue
            self.algorithm.receive(i, sent, ClientModel(params, buffers), self.data.train_sizes[i])
            self._round_losses.append(loss)
        self.algorithm.end_round()
        if self.round % fed.eval_every == 0 or self.round == fed.rounds:
            self._evaluate_and_log()

    def _reject(self, i: int) -> None:
        """A NaN/Inf update never reaches server state; the client counts as not having reported."""
        if self.cfg.client.on_nonfinite == "fail":
            raise FloatingPointError(
                f"round {self.round}: client {i} returned a non-finite update (client.on_nonfinite=fail); "
                "lower client.lr or set client.on_nonfinite=reject"
            )
        log.warning("round %d: client %d returned NaN/Inf; update rejected", self.round, i)
        self.rejected.append([self.round, i])

    def _evaluate_and_log(self) -> None:
        accs = torch.stack([self.client_accuracy(i) for i in range(self.data.num_clients)])
        sizes = torch.tensor(self.data.test_sizes, dtype=accs.dtype, device=accs.device)
        record = {
            "round": self.round,
            "test/acc_mean": accs.mean().item(),  # unweighted over clients: the headline
            "test/acc_weighted": (accs * sizes).sum().item() / sizes.sum().item(),
            "train/loss": torch.stack(self._round_losses).mean().item() if self._round_losses else float("nan"),
            "comm/bytes_down": int(self.algorithm.bytes_down),
            "comm/bytes_up": int(self.algorithm.bytes_up),
        }
        self._round_losses.clear()
        self.log_dict({k: float(v) for k, v in record.items()}, on_step=True, on_epoch=False)
        self.log("acc", record["test/acc_mean"], prog_bar=True, logger=False, on_step=True, on_epoch=False)
        self.history.append({**record, "client_acc": accs.tolist()})
        if self.run_dir is not None:
            write_metrics_csv(Path(self.run_dir) / "metrics.csv", self.history)

    @torch.no_grad()
    def client_accuracy(self, i: int) -> torch.Tensor:
        model = self.algorithm.evaluation_model(i)
        preds = predict(self.model, model.params, model.buffers, self.data.test_x[i])
        return multiclass_accuracy(preds, self.data.test_y[i], num_classes=self.data.num_classes, average="micro")
