"""The LightningModule that runs federated rounds: one training step (and one epoch) == one round.

Lightning gives the loop, progress bar, loggers and checkpoints; the round itself is plain tensor
work: sample clients, send ``algorithm.model_for(i)``, train with ``client_trainer`` starting from
exactly that, ``algorithm.receive``, then ``algorithm.end_round``. Resume is clean because every
round boundary is an epoch boundary and all randomness is a function of (seed, round, client).
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
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
from pfedla.client_vmap import predict_clients_vmap, train_clients_vmap
from pfedla.datasets import FederatedData
from pfedla.distributed import Ranks, tensors_digest
from pfedla.outputs import write_metrics_csv
from pfedla.sampling import sample_clients

log = logging.getLogger("pfedla")


class PhaseTimer:
    """Wall seconds per named phase of a round (synchronising the GPU so the split is real)."""

    def __init__(self, device: torch.device):
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.seconds: dict[str, float] = {"client": 0.0, "gather": 0.0, "server": 0.0, "eval": 0.0}

    @contextmanager
    def __call__(self, phase: str):
        self.sync()
        start = time.perf_counter()
        yield
        self.sync()
        self.seconds[phase] += time.perf_counter() - start


def _all_finite(params: dict, buffers: dict, loss: torch.Tensor) -> torch.Tensor:
    """A 0-d bool tensor (no host sync): are the loss and every floating tensor finite?"""
    checks = [torch.isfinite(loss).all()] + [torch.isfinite(t).all() for d in (params, buffers) for t in d.values()
                                             if t.is_floating_point()]
    return torch.stack(checks).all()


class FederatedModule(L.LightningModule):
    def __init__(self, model: nn.Module, algorithm: Algorithm, data: FederatedData, cfg):
        super().__init__()
        self.automatic_optimization = False  # the algorithm owns every update
        self.arch = [model]  # architecture only (functional_call swaps in each client's tensors); not state
        self.algorithm = algorithm
        self.data = data
        self.cfg = cfg
        self.run_dir = None  # where metrics.csv is kept current (set by run()); None: nowhere
        self.client_trainer = train_client  # the seam tests use to observe what a client starts from
        self.client_progress = lambda done, total: None  # set by the progress display
        self.history: list[dict] = []  # one record per evaluation round
        self.stopped_by_signal = 0  # set by RoundCheckpoint
        self.rejected: list[list[int]] = []  # [round, client] of updates with NaN/Inf, never applied
        self._round_losses: list[torch.Tensor] = []
        self.timings: list[dict] = []  # per round: seconds in client training, server work, evaluation

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
        self.check_ranks_agree("at the start of training", data=True)

    @property
    def ranks(self) -> Ranks:
        """Where this process stands among the run's processes (one, unless trainer.devices/num_nodes > 1)."""
        return Ranks.of(self._trainer)

    def check_ranks_agree(self, when: str, data: bool = False) -> None:
        """Every rank must hold the same server state, and (``data``) the same client data (no-op in one process)."""
        ranks = self.ranks
        if ranks.world > 1:
            if data:
                ranks.check_agree(f"the federated data {when}", tensors_digest(
                    [self.data.fingerprint], self.data.train_x, self.data.train_y, self.data.test_x, self.data.test_y))
            ranks.check_agree(f"the server state {when}", tensors_digest(self.state_dict()))

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
        fed = self.cfg.federation
        timer = PhaseTimer(self.device)
        with timer("server"):
            sampled = sample_clients(self.cfg.seed, self.round, self.data.num_clients, fed.participation)
            self.algorithm.begin_round(sampled)
            sent = {i: self.algorithm.model_for(i) for i in sampled}  # all from the start-of-round state
            sizes = [self.data.train_sizes[i] for i in sampled]
            mine = self.ranks.share(sampled, sizes)  # every client when in one process
        with timer("client"):
            trained = self._train_clients(mine, sent)
        with timer("gather"):  # identity in one process; with K ranks, every rank gets every result
            results = self.ranks.gather_clients(sampled, sizes, trained, sent[sampled[0]])
        with timer("server"):
            finite = torch.stack([_all_finite(*result) for result in results]).tolist()  # one sync per round
            for i, size, (params, buffers, loss), ok in zip(sampled, sizes, results, finite):
                if not ok:
                    self._reject(i)
                    continue
                self.algorithm.receive(i, sent[i], ClientModel(params, buffers), size)
                self._round_losses.append(loss)
            self.algorithm.end_round()
        if self.round % fed.eval_every == 0 or self.round == fed.rounds:
            with timer("eval"):
                self._evaluate_and_log()
        self.timings.append({"round": self.round, "clients": len(sampled), **timer.seconds})

    def _train_clients(self, sampled: list[int], sent: dict[int, ClientModel]) -> list:
        cl = self.cfg.client
        if not sampled:  # a rank with no client this round (fewer sampled clients than ranks)
            return []
        sgd = dict(epochs=cl.epochs, batch_size=cl.batch_size, lr=cl.lr, momentum=cl.momentum,
                   weight_decay=cl.weight_decay)
        if cl.engine == "vmap":
            results = train_clients_vmap(
                self.model, [(sent[i].params, sent[i].buffers) for i in sampled],
                [(self.data.train_x[i], self.data.train_y[i]) for i in sampled],
                generators=[client_generator(self.cfg.seed, self.round, i) for i in sampled], **sgd,
            )
        else:
            results = []
            for done, i in enumerate(sampled):
                self.client_progress(done, len(sampled))
                results.append(self.client_trainer(
                    self.model, sent[i].params, sent[i].buffers, self.data.train_x[i], self.data.train_y[i],
                    generator=client_generator(self.cfg.seed, self.round, i), **sgd,
                ))
        return results

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
        accs = self.client_accuracies()
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
        if self.run_dir is not None and self.trainer.is_global_zero:
            write_metrics_csv(Path(self.run_dir) / "metrics.csv", self.history)

    @torch.no_grad()
    def client_accuracies(self) -> torch.Tensor:
        """Accuracy of ``evaluation_model(i)`` on client i's test split, for every client.

        With K ranks each evaluates its share of the clients; the sum over ranks assembles the vector."""
        ranks, everyone = self.ranks, list(range(self.data.num_clients))
        clients = ranks.share(everyone, self.data.test_sizes)
        models = [self.algorithm.evaluation_model(i) for i in clients]
        test_x = [self.data.test_x[i] for i in clients]
        if self.cfg.client.engine == "vmap":
            preds = predict_clients_vmap(self.model, [(m.params, m.buffers) for m in models], test_x)
        else:
            preds = [predict(self.model, m.params, m.buffers, x) for m, x in zip(models, test_x)]
        accs = torch.zeros(len(everyone), device=self.device)
        k = self.data.num_classes
        for i, p in zip(clients, preds):
            accs[i] = multiclass_accuracy(p, self.data.test_y[i], num_classes=k, average="micro")
        return ranks.sum(accs)
