"""FedBABU (Oh, Kim & Yun, "FedBABU: Towards Enhanced Representation for Federated Image Classification",
ICLR 2022; the authors' code: github.com/jhoon-oh/FedBABU, main_fed.py, models/Update.py, analysis.ipynb).

FedAvg in which the head (pfedla/models/contract.py) is never trained: every client shares its random
initial weights, and only the body learns and is averaged. Personalization happens after federation,
by fine-tuning the whole model (body and head) locally.

Scores: (a) is the global model, the body with the untrained head (the authors' "initial" accuracy).
(b) is that model fine-tuned, ``finetune_epochs`` epochs of local SGD at ``finetune_lr`` (client.momentum,
client.batch_size). That is the number the paper reports; the authors fine-tune for 5 epochs at lr 1e-3
with momentum 0.9. A new client gets the global model, as in FedAvg, and is fine-tuned the same way.

Differences from the authors' code: the average is weighted by sample count, as FedAvg's is here (theirs
is a plain mean over the sampled clients). BatchNorm keeps running statistics, averaged as FedAvg's
(theirs uses batch statistics at test time). The head, never trained, is sent each round as part of the
global model and counted. An average of identical heads weighted by integers is the head, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING
from torch import nn

from pfedla.algorithms.base import LocalPlan, Options, options
from pfedla.algorithms.fedavg import FedAvg
from pfedla.errors import check
from pfedla.models.contract import body_names


@options("schema_fedbabu")
@dataclass
class FedBABUOptions(Options):
    finetune_epochs: int = MISSING  # local epochs of the fine-tuning scored as (b)
    finetune_lr: float = MISSING  # its lr


class FedBABU(FedAvg):
    @staticmethod
    def check_config(cfg) -> None:
        check(cfg.finetune_epochs >= 1, "algorithm.finetune_epochs", cfg.finetune_epochs, "must be >= 1", "5")
        check(cfg.finetune_lr > 0, "algorithm.finetune_lr", cfg.finetune_lr, "must be > 0", "0.001")

    def __init__(self, model: nn.Module, num_clients: int, cfg):
        super().__init__(model, num_clients, cfg)
        self.body = frozenset(body_names(model))
        self.finetune_epochs, self.finetune_lr = int(cfg.finetune_epochs), float(cfg.finetune_lr)

    def local_plan(self, epochs: int) -> LocalPlan:
        return LocalPlan(((epochs, self.body),))

    def adapt_plan(self, epochs: int) -> LocalPlan:
        return LocalPlan.epochs(self.finetune_epochs, lr=self.finetune_lr)
