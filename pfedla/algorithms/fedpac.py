"""FedPAC (Xu, Tong & Huang, "Personalized Federated Learning with Feature Alignment and Classifier
Collaboration", ICLR 2023; the authors' code: github.com/JianXu95/FedPAC, methods/fedpac.py, tools.py).

The model is a shared body and a head per client (pfedla/models/contract.py).

- **Statistics.** Before training, on its train split, with the model it received (eval mode), the client
  computes, for its label shares p_c and feature means mu_c:
  - h_c = p_c mu_c;
  - v = sum_c [p_c E_c||f||^2 - p_c^2 ||mu_c||^2] / n, as in the authors' ``get_statistics``.
  These go to the server. This is the plan's ``prepare``, which also fixes the alignment targets below.
- **Local training.** Two phases:
  - ``head_epochs`` of the head alone on the cross-entropy, at ``head_lr``;
  - client.epochs of the body alone on the cross-entropy plus ``lam`` times the mean squared error of
    the features to their label's global centroid, over batch and dimensions. A label with no global
    centroid aims at the client's own feature mean from before training. Before any centroid exists,
    that is in round one, there is no alignment.
- **Server.**
  - The body is averaged by sample count (FedAvg).
  - The centroid of class c is the mean over the round's clients of their class-c feature means after
    training, weighted by their class-c counts (the plan's ``finish``).
  - Each participant i gets a head combined from the participants' trained heads, sum_j a_j head_j. The
    weights a solve min a'(diag(v) + D)a over the simplex, with
    D_jk = sum_c <h_i,c - h_j,c, h_i,c - h_k,c>.
  - If that matrix has a negative eigenvalue, it is rebuilt from its eigenpairs of eigenvalue >= 0.01
    (the authors' code). Weights at or below 1e-3 are dropped and the rest renormalised.
  - The QP is solved by scipy's SLSQP to 1e-12. The authors use cvxpy. tests/test_head_methods.py
    checks it against an exhaustive solve over every support.

Scores: (a) is the body with the client's combined head (what it starts from next round). (b) is that
model after plain local SGD. A new client gets the body with the mean of the trained clients' heads: it
has no statistics in any round's QP.

Different from the authors' code: client.momentum and weight decay (theirs: 0.5 and 5e-4, fixed), and
FedAvg's treatment of BatchNorm statistics (averaged with the body; their CNN has none).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import MISSING
from torch import nn

from pfedla.algorithms.base import ClientData, LocalPlan, Objective, Options, Report, options
from pfedla.algorithms.fedavg import FedAvg
from pfedla.algorithms.stacked import ClientModel, StackedTensors, nbytes
from pfedla.engines.evaluation import features_of
from pfedla.errors import check
from pfedla.models.contract import body_names, head_module, head_names

CENTROIDS, HAS = "pac/centroids", "pac/has"  # sent: the global class centroids [C, d], and which exist [C]
TARGET, ALIGN = "pac/target", "pac/align"  # the alignment target per class [C, d]; 1 once centroids exist
V, H = "pac/v", "pac/h"  # uploaded statistics before training: v [1], h [C, d]
MEANS, COUNTS = "pac/means", "pac/counts"  # uploaded after training: feature means [C, d], class counts [C]
DROP = 1e-3  # combination weights at or below this are dropped (the authors' code)
EIGEN_FLOOR = 0.01  # eigenpairs kept when the QP's matrix is not PSD


@options("schema_fedpac")
@dataclass
class FedPACOptions(Options):
    lam: float = MISSING  # weight of the features' squared distance to their label's centroid
    head_epochs: int = MISSING  # local epochs of the head alone, first
    head_lr: float = MISSING  # their lr


def class_means(f: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean features per class [C, d] (zeros for a class absent), counts [C])."""
    sums = torch.zeros(num_classes, f.shape[1], dtype=f.dtype, device=f.device).index_add_(0, y, f)
    counts = torch.bincount(y, minlength=num_classes).to(f.dtype)
    return sums / counts.clamp(min=1)[:, None], counts


def statistics(f: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(v [1], h [C, d]) of features ``f`` with labels ``y``: h_c = p_c mu_c, and
    v = sum_c [p_c mean_c ||f||^2 - p_c^2 ||mu_c||^2] / n."""
    means, counts = class_means(f, y, num_classes)
    n = len(y)
    shares = counts / n
    square = torch.zeros(num_classes, dtype=f.dtype, device=f.device).index_add_(0, y, (f * f).sum(1))
    mean_square = square / counts.clamp(min=1)
    v = ((shares * mean_square - shares**2 * (means * means).sum(1)).sum() / n).reshape(1)
    return v, shares[:, None] * means


def combination_weights(v: torch.Tensor, h: torch.Tensor, i: int) -> torch.Tensor:
    """The head weights of participant ``i`` [m] from every participant's v [m] and h [m, C, d] (float64)."""
    diff = (h[i][None] - h).flatten(1)  # [m, C*d]
    matrix = torch.diag(v) + diff @ diff.T
    values, vectors = torch.linalg.eigh(matrix)
    if values.min() < 0:
        keep = values >= EIGEN_FLOOR
        matrix = (vectors[:, keep] * values[keep]) @ vectors[:, keep].T
    weights = torch.as_tensor(simplex_qp(matrix.cpu().numpy()), dtype=torch.float64)
    weights = torch.where(weights > DROP, weights, torch.zeros_like(weights))
    return weights / weights.sum()


def simplex_qp(matrix: np.ndarray) -> np.ndarray:
    """argmin a' M a over the probability simplex (M symmetric PSD), by SLSQP from the uniform point."""
    from scipy.optimize import minimize  # here: every algorithm module is imported by every run and node message

    m = len(matrix)
    result = minimize(lambda a: a @ matrix @ a, np.full(m, 1.0 / m), jac=lambda a: 2 * matrix @ a,
                      bounds=[(0.0, 1.0)] * m, constraints=[{"type": "eq", "fun": lambda a: a.sum() - 1,
                                                             "jac": lambda a: np.ones(m)}],
                      method="SLSQP", options={"ftol": 1e-12, "maxiter": 1000})
    return np.clip(result.x, 0.0, None)


class Statistics:
    """FedPAC's client-side step before training (a LocalPlan's ``prepare``): v and h with the model received, and
    the alignment target of each class (the global centroid, or the client's own feature mean)."""

    def __init__(self, model: nn.Module, param_names: list[str], num_classes: int):
        self.model, self.param_names, self.num_classes = model, param_names, num_classes

    def __call__(self, received: ClientModel, data: ClientData) -> tuple[ClientModel, dict]:
        params = {n: received.params[n] for n in self.param_names}
        f = features_of(self.model, params, received.buffers, data.train_x).double()
        v, h = statistics(f, data.train_y, self.num_classes)
        own, _ = class_means(f, data.train_y, self.num_classes)
        has = received.params[HAS].bool()[:, None]
        target = torch.where(has, received.params[CENTROIDS].double(), own).to(received.params[CENTROIDS].dtype)
        dtype = received.params[CENTROIDS].dtype
        model = ClientModel({**params, TARGET: target, ALIGN: received.params[ALIGN]}, received.buffers)
        return model, {V: v.to(dtype), H: h.to(dtype)}

    def uploaded(self, received: ClientModel) -> ClientModel:
        like = received.params[CENTROIDS]
        params = {n: received.params[n] for n in self.param_names}
        extra = {TARGET: like, ALIGN: received.params[ALIGN], V: like.new_zeros(1), H: like}
        return ClientModel({**params, **extra}, received.buffers)


class ClassMeans:
    """FedPAC's client-side step after training (a LocalPlan's ``finish``): its feature means and class counts."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def __call__(self, trained: ClientModel, x, y, features) -> dict:
        means, counts = class_means(features(trained, x), y, self.num_classes)
        return {MEANS: means, COUNTS: counts}

    def uploaded(self, received: ClientModel) -> dict:
        like = received.params[CENTROIDS]
        return {MEANS: like, COUNTS: received.params[HAS]}


class FedPAC(FedAvg):
    personal_stays_on_client = False  # the server combines the clients' heads: they are uploaded and sent

    @staticmethod
    def check_config(cfg) -> None:
        check(cfg.lam >= 0, "algorithm.lam", cfg.lam, "must be >= 0 (0: no feature alignment)", "1.0")
        check(cfg.head_epochs >= 0, "algorithm.head_epochs", cfg.head_epochs, "must be >= 0", "1")
        check(cfg.head_lr > 0, "algorithm.head_lr", cfg.head_lr, "must be > 0", "0.1")

    def personal_names(self, model: nn.Module) -> list[str]:
        return head_names(model)

    def __init__(self, model: nn.Module, num_clients: int, cfg):
        super().__init__(model, num_clients, cfg)  # the body: FedAvg's global model; the heads: client rows
        head = head_module(model)
        self.lam, self.head_epochs, self.head_lr = float(cfg.lam), int(cfg.head_epochs), float(cfg.head_lr)
        self.head, self.body = frozenset(head_names(model)), frozenset(body_names(model))
        self.num_classes, dim = head.out_features, head.in_features
        self.centroids = StackedTensors({"centroids": torch.zeros(1, self.num_classes, dim),
                                         "has": torch.zeros(1, self.num_classes)})
        self.register_buffer("head_weights", torch.zeros(num_clients, num_clients, dtype=torch.float64))
        self.statistics = Statistics(model, self.param_names, self.num_classes)
        self.class_means = ClassMeans(self.num_classes)

    def model_for(self, i: int) -> ClientModel:
        sent = super().model_for(i)  # the body (counted as FedAvg's download) and the client's combined head
        has = self.centroids["has"][0]
        self.count_bytes(down=nbytes(self.client_params.row(i), self.head) + nbytes(self.centroids.as_dict()))
        extra = {CENTROIDS: self.centroids["centroids"][0].clone(), HAS: has.clone(),
                 ALIGN: (has.sum() > 0).to(has.dtype).reshape(1)}
        return ClientModel({**sent.params, **extra}, sent.buffers)

    def local_plan(self, epochs: int) -> LocalPlan:
        lam, head = self.lam, sorted(self.head)
        weight, bias = [n for n in head if n.endswith("weight")][0], [n for n in head if n.endswith("bias")][0]

        def head_loss(params, received, buffers, x, y, forward):
            logits, new_buffers = forward(params, buffers, x)
            return F.cross_entropy(logits, y), new_buffers

        def body_loss(params, received, buffers, x, y, forward):
            features, new_buffers = forward(params, buffers, x, features=True)
            logits = F.linear(features, params[weight], params[bias])
            align = F.mse_loss(features, received[TARGET][y])
            return F.cross_entropy(logits, y) + lam * received[ALIGN][0] * align, new_buffers

        return LocalPlan(((self.head_epochs, self.head), (epochs, self.body)),
                         steps=(Objective(head_loss, self.head, lr=self.head_lr), Objective(body_loss, self.body)),
                         prepare=self.statistics, finish=self.class_means)

    def adapt_plan(self, epochs: int) -> LocalPlan:
        return LocalPlan.epochs(epochs)

    @torch.no_grad()
    def receive_round(self, reports: list[Report]) -> None:
        for r in reports:  # the body averaged by FedAvg; each client's trained head kept in its row for now
            model = ClientModel({n: r.trained.params[n] for n in self.param_names}, r.trained.buffers)
            self.receive(r.client, r.sent, model, r.num_samples)
            self.count_bytes(up=nbytes(r.trained.params, [*sorted(self.head), V, H, MEANS, COUNTS]))
        self.end_round()
        if not reports:
            return
        counts = torch.stack([r.trained.params[COUNTS].double() for r in reports])  # [m, C]
        means = torch.stack([r.trained.params[MEANS].double() for r in reports])  # [m, C, d]
        holders = counts.sum(0)
        centroids = (counts[:, :, None] * means).sum(0) / holders.clamp(min=1)[:, None]
        self.centroids["centroids"][0].copy_(centroids)
        self.centroids["has"][0].copy_((holders > 0).to(self.centroids["has"].dtype))
        v = torch.cat([r.trained.params[V].double() for r in reports])
        h = torch.stack([r.trained.params[H].double() for r in reports])
        heads = {n: torch.stack([r.trained.params[n].double() for r in reports]) for n in self.head}
        clients = [r.client for r in reports]
        for k, i in enumerate(clients):
            weights = combination_weights(v, h, k).to(self.device)
            self.head_weights[i].zero_()
            self.head_weights[i, clients] = weights
            combined = {n: torch.einsum("j,j...->...", weights, heads[n]) for n in self.head}
            self.client_params.set_row(i, combined, names=sorted(self.head))

    def summary_fields(self, class_counts, groups=None) -> dict:
        """The last head-combination weights (row i: the weights of client i's head)."""
        return {"fedpac_head_weights": self.head_weights.tolist()}
