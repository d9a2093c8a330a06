"""The LightningModule that runs federated rounds: one training step (and one epoch) == one round.

Lightning gives the loop, progress bar, loggers and checkpoints; the round itself is plain tensor
work: sample clients, send ``algorithm.model_for(i)``, train with the run's engine (pfedla/engines/)
starting from exactly that, then hand every finite result to ``algorithm.receive_round`` in one call.
Resume is clean because every round boundary is an epoch boundary and all randomness is a function of
(seed, round, client).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from pfedla.algorithms.base import Report, RoundContext
from pfedla.algorithms.stacked import ClientModel
from pfedla.assembly import RunParts
from pfedla.compute import Compute, choose_compute, cpu_model
from pfedla.distributed import Ranks, tensors_digest
from pfedla.engines import Engine
from pfedla.engines.batches import STREAM_ADAPT_BATCHES, STREAM_CLIENT_BATCHES
from pfedla.outputs import write_metrics_csv
from pfedla.sampling import sample_clients
from pfedla.timing import PhaseTimer
from pfedla.transport import InProcess, all_finite, plan_for

log = logging.getLogger("pfedla")

# Score (a): the personalized model as the server produces it; (b): that model after the client's local
# adaptation. Metric names: ``{split}/acc_mean`` for (a), ``{split}/adapted_acc_mean`` for (b).
SCORES = {"personalized": "", "adapted": "adapted_"}


class FederatedModule(L.LightningModule):
    def __init__(self, parts: RunParts, cfg):
        super().__init__()
        self.automatic_optimization = False  # the algorithm owns every update
        self.arch = [parts.model]  # architecture only (functional_call swaps in each client's tensors); not state
        self.algorithm = parts.algorithm
        self.data = parts.data  # the training federation
        self.unseen = parts.unseen  # clients held out of every round (federation.unseen_fraction; pfedla/unseen.py)
        self.partition = parts.partition  # every client, held out or not
        self.cfg = cfg
        self.run_dir = None  # where metrics.csv is kept current (set by run()); None: nowhere
        # How clients train and are scored (client.engine); its Compute is chosen at fit start. The loop engine's
        # ``train_one`` is the seam tests use to observe what a client starts from.
        self.engine: Engine = parts.engine
        self.client_progress = lambda done, total: None  # set by the progress display
        self.transport = InProcess(self)  # where clients work: here, on self.data (pfedla/transport.py)
        self.history: list[dict] = []  # one record per evaluation round
        self.rounds_done = 0  # rounds trained so far (checkpointed; evaluation may lag behind)
        self.stopped_by_signal = 0  # set by RoundCheckpoint
        self.rejected: list[list[int]] = []  # [round, client] of updates with NaN/Inf, never applied
        self.checkpointed_round = 0  # rounds_done in the last checkpoint written or loaded
        self._round_losses: list[torch.Tensor] = []
        self.timings: list[dict] = []  # per round (checkpointed): seconds per timing.PHASES, CPU seconds, the CPU
        # The run's clock: seconds its earlier processes trained, through the checkpoint this one resumed (None: that
        # checkpoint predates the clock), and when this process began (reset by run() as it starts training)
        self.seconds_before: float | None = 0.0
        self.resumed_round = 0
        self.clock_started = time.perf_counter()
        self.threads = torch.get_num_threads()

    @property
    def model(self) -> nn.Module:
        return self.arch[0]

    @property
    def compute(self) -> Compute:
        """The memory format and precision of training and evaluation (the engine's; chosen at fit start)."""
        return self.engine.compute

    # --- Lightning plumbing -----------------------------------------------------------------------
    def configure_optimizers(self):
        return None

    def train_dataloader(self):
        return DataLoader([0], batch_size=None)  # one step per epoch: the epoch is the round

    def on_fit_start(self) -> None:
        self.engine.compute = choose_compute(self.cfg.trainer, self.model, self.device, self.engine.channels_last)
        self.threads = torch.get_num_threads()  # as training runs (a launcher may have changed it)
        self.data = self.data.to(self.device, self.compute)
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
                splits = [t for split in ("train", "val", "test") for t in self.data.split(split)]
                ranks.check_agree(f"the federated data {when}", tensors_digest([self.data.fingerprint], *splits))
            ranks.check_agree(f"the server state {when}", tensors_digest(self.state_dict()))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["pfedla_history"] = self.history
        checkpoint["pfedla_rounds_done"] = self.rounds_done
        self.checkpointed_round = self.rounds_done
        checkpoint["pfedla_rejected"] = self.rejected
        checkpoint["pfedla_config"] = OmegaConf.to_container(self.cfg, resolve=True)
        checkpoint["pfedla_timings"] = self.timings
        if self.seconds_before is not None:
            checkpoint["pfedla_seconds"] = self.run_seconds()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint.get("pfedla_history", []))
        self.rounds_done = self.resumed_round = int(checkpoint.get("pfedla_rounds_done", 0))
        self.checkpointed_round = self.rounds_done
        self.rejected = list(checkpoint.get("pfedla_rejected", []))
        self.timings = list(checkpoint.get("pfedla_timings", []))
        self.seconds_before = checkpoint.get("pfedla_seconds")

    def run_seconds(self) -> float:
        """Seconds the run has trained so far, over its processes: each earlier one through the checkpoint the next
        resumed (rounds trained after it were trained again, and counted once). Needs ``seconds_before``."""
        return self.seconds_before + time.perf_counter() - self.clock_started

    # --- one round --------------------------------------------------------------------------------
    @property
    def round(self) -> int:
        return self.current_epoch + 1  # 1-based

    def training_step(self, batch, batch_idx):
        fed = self.cfg.federation
        timer = PhaseTimer(self.device)
        with timer("server"):
            sampled = sample_clients(self.cfg.seed, self.round, self.data.num_clients, fed.participation)
            self.algorithm.begin_round(RoundContext(self.round, sampled, self.cfg.seed, self.algorithm.device))
            sent = {i: self.algorithm.model_for(i) for i in sampled}  # all from the start-of-round state
            sizes = [self.data.train_sizes[i] for i in sampled]
            mine = self.ranks.share(sampled, sizes)  # every client when in one process
        with timer("client"):
            trained = self.transport.train(self.round, mine, sent, "local", STREAM_CLIENT_BATCHES)
        if self.ranks.world == 1:
            results = list(trained)  # every result is here already: nothing gathered, no gather seconds
        else:
            with timer("gather"):  # with K ranks, every rank gets every result
                template = plan_for(self.algorithm, "local", self.cfg.client.epochs).upload_template(sent[sampled[0]])
                results = self.ranks.gather_clients(sampled, sizes, trained, template)
        with timer("server"):
            finite = torch.stack([all_finite(*result) for result in results]).tolist()  # one sync per round
            reports = []
            for i, size, (params, buffers, loss), ok in zip(sampled, sizes, results, finite):
                if not ok:
                    self._reject(i)
                    continue
                reports.append(Report(i, sent[i], ClientModel(params, buffers), size))
                self._round_losses.append(loss)
            self.algorithm.receive_round(reports)
        last = self.round == fed.rounds
        adapt = fed.adapt_every > 0 and (self.round % fed.adapt_every == 0 or last)
        if adapt or last or self.round % fed.eval_every == 0:
            self._evaluate_and_log(adapt, timer)
        self.rounds_done = self.round
        self.timings.append({"round": self.round, "clients": len(sampled), **timer.seconds, "cpu": timer.cpu_seconds(),
                             "cpu_model": cpu_model()})

    def last_trained(self, client: int, through: int) -> int:
        """The last round <= ``through`` in which ``client`` trained and its update was accepted (0: none): the
        version of the tensors it keeps on its side (ClientModel.kept), from the sampling and ``rejected`` alone,
        so a resumed run knows it too."""
        fed, rejected = self.cfg.federation, {(r, c) for r, c in self.rejected}
        for r in range(through, 0, -1):
            if (r, client) not in rejected and client in sample_clients(self.cfg.seed, r, self.data.num_clients,
                                                                        fed.participation):
                return r
        return 0

    def _reject(self, i: int) -> None:
        """A NaN/Inf update never reaches server state; the client counts as not having reported."""
        if self.cfg.client.on_nonfinite == "fail":
            raise FloatingPointError(
                f"round {self.round}: client {i} returned a non-finite update (client.on_nonfinite=fail); "
                "lower client.lr or set client.on_nonfinite=reject"
            )
        log.warning("round %d: client %d returned NaN/Inf; update rejected", self.round, i)
        self.rejected.append([self.round, i])

    def _evaluate_and_log(self, adapt: bool, timer: PhaseTimer) -> None:
        accs = self.client_accuracies(adapt, timer)
        record: dict = {"round": self.round}
        test_sizes = torch.tensor(self.data.test_sizes, dtype=torch.float64)
        for score, split_accs in accs.items():
            prefix = SCORES[score]
            test = split_accs["test"].double().cpu()
            record[f"val/{prefix}acc_mean"] = split_accs["val"].mean().item()
            record[f"test/{prefix}acc_mean"] = test.mean().item()  # unweighted over clients: the headline
            record[f"test/{prefix}acc_weighted"] = ((test * test_sizes).sum() / test_sizes.sum()).item()
        record["train/loss"] = (torch.stack(self._round_losses).mean().item() if self._round_losses
                                else float("nan"))
        record["comm/bytes_down"] = int(self.algorithm.bytes_down)
        record["comm/bytes_up"] = int(self.algorithm.bytes_up)
        record.update(self.algorithm.round_metrics())
        self._round_losses.clear()
        self.log_dict({k: float(v) for k, v in record.items()}, on_step=True, on_epoch=False)
        self.log("acc", record["test/acc_mean"], prog_bar=True, logger=False, on_step=True, on_epoch=False)
        per_client = {f"{SCORES[score]}client_acc": a["test"].tolist() for score, a in accs.items()}
        self.history.append({**record, **per_client})
        if self.run_dir is not None and self.trainer.is_global_zero:
            write_metrics_csv(Path(self.run_dir) / "metrics.csv", self.history)

    def client_accuracies(self, adapt: bool = False, timer: PhaseTimer | None = None) -> dict:
        """``{score: {"val": accs[N], "test": accs[N]}}`` for every client: score ``personalized`` (a), and with
        ``adapt`` (and an algorithm that adapts) ``adapted`` (b): a copy of model (a) trained by the client's
        own local procedure (client.*, its train split, a batch order of its own). Server state is untouched.

        With K ranks each evaluates its share of the clients; the sum over ranks assembles the vectors."""
        timer = timer or PhaseTimer(self.device)
        ranks, everyone = self.ranks, list(range(self.data.num_clients))
        clients = ranks.share(everyone, [a + b for a, b in zip(self.data.train_sizes, self.data.test_sizes)])
        with timer("eval"):
            models = self.algorithm.scored_parts(clients)  # composed where the client is (transport)
            scores = {"personalized": self.transport.score(clients, models)}
        if adapt and self.algorithm.adapts:
            with timer("adapt"):  # the adaptation and the adapted models' scores
                scores["adapted"] = self.transport.adapted_score(self.round, clients, models, STREAM_ADAPT_BATCHES)
        # clone(): score()'s results are inference tensors, which in-place collectives must not touch
        return {score: {split: ranks.sum(a.clone()) for split, a in by_split.items()}
                for score, by_split in scores.items()}

    def partition_summary(self) -> dict:
        """What partition.json holds: every client of the partition, and which were held out of training."""
        summary = self.partition.summary()
        if self.unseen is not None:
            summary["unseen_clients"] = self.unseen.ids
        return summary
