"""pFedGraph (Ye et al., "Personalized Federated Learning with Inferred Collaboration Graphs", ICML 2023;
the authors' code: github.com/MediaBrain-SJTU/pFedGraph, pytorch/pfedgraph_cosine.py and its utils.py).

The server learns, every round, a collaboration graph among the round's participants from their models,
and sends each client its own aggregate. For participants P with data shares p_j = n_j / sum_P n:

- **Similarity.** s_ij = cos(dw_i, dw_j), where dw_j = w_j - w_0 is client j's change since the common
  initial model, over the model's parameters (flattened). Values above 0.9 count as 1, as in the
  authors' code.
- **Graph.** Row i of the graph is the exact minimiser of alpha ||a - p||^2 - sum_j a_j s_ij over the
  simplex (a >= 0, sum a = 1). That is the Euclidean projection of p + s_i / (2 alpha) onto the simplex,
  solved in closed form (``project_to_simplex``). The authors' code solves the same QP with cvxpy.
  A large alpha gives the data shares (FedAvg's weights). A small one keeps a client with its most
  similar peers, itself first (s_ii = 1). Once every similarity in a row is above 0.9 (all count as 1),
  the row is the data shares whatever alpha is.
- **Aggregation.** The client's next model is sum_j a_ij w_j over every tensor (the authors' code mixes
  every tensor of its state dict; its CNN has no BatchNorm, and here BatchNorm statistics are mixed
  too). Its cluster vector c_i = sum_j a_ij w_j / ||w_j|| (parameters) is kept
  for its next local training.
- **Local training.** The client starts from its aggregate. Its loss is the cross-entropy minus
  ``lam`` sum_j a_ij cos(w, w_j) (= lam <c_i, w> / ||w||): a pull towards its neighbours' directions, the
  sign of the paper's objective. The authors' code adds the term with the opposite sign (a push away; their
  issue #1). ``algorithm.lam`` < 0 reproduces it. A client that was never aggregated has no cluster
  vector (c = 0: the term is exactly zero), as in the code's first round.

Partial participation: the graph and the aggregates cover the round's participants. A client that sat
out keeps its aggregate and its cluster vector, and uses them when next sampled.

Scores: (a) is the client's aggregate (what it starts from next round). (b) is that model after plain
local SGD (client.*). The authors report the better of before and after local training, picked by
validation.

Not from the paper: local work is ``client.epochs`` epochs, not a fixed count of iterations. A new
client (pfedla/unseen.py) runs the graph step for itself against the trained clients' last trained
models for each of its local rounds. Its data share is the trained clients' mean, since the recipe
does not know its size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import MISSING
from torch import nn

from pfedla.algorithms.base import Algorithm, LocalPlan, Objective, Options, Report, options
from pfedla.algorithms.stacked import ClientModel, StackedTensors, nbytes
from pfedla.errors import check

CLUSTER = "cluster/"  # the cluster vector c_i, per parameter, in a client's training state
SAME = 0.9  # cosine similarities above this count as 1 (the authors' code)


@options("schema_pfedgraph")
@dataclass
class PFedGraphOptions(Options):
    alpha: float = MISSING  # the graph's pull towards the data shares: alpha ||a - p||^2
    lam: float = MISSING  # the local pull towards the neighbours: - lam sum_j a_ij cos(w, w_j)


def project_to_simplex(v: torch.Tensor) -> torch.Tensor:
    """Each row of ``v`` [R, n] projected onto the probability simplex in Euclidean distance (sort-based:
    the largest k such that v_(k) > (sum of the k largest - 1) / k fixes the shift tau)."""
    ordered = v.sort(dim=-1, descending=True).values
    shifted = (ordered.cumsum(-1) - 1) / torch.arange(1, v.shape[-1] + 1, dtype=v.dtype, device=v.device)
    k = (ordered > shifted).sum(-1, keepdim=True)  # >= 1: the largest entry always passes
    tau = shifted.gather(-1, k - 1)
    return (v - tau).clamp(min=0)


def graph_rows(similarity: torch.Tensor, shares: torch.Tensor, alpha: float) -> torch.Tensor:
    """The graph's rows [R, n]: for each row s of ``similarity`` [R, n], argmin over the simplex of
    alpha ||a - p||^2 - <a, s>, with p = ``shares`` [n]."""
    return project_to_simplex(shares + similarity / (2 * alpha))


def cosine_similarity(changes: torch.Tensor) -> torch.Tensor:
    """[n, n] cosines between the rows of ``changes`` [n, D]; above ``SAME`` they count as 1."""
    unit = changes / changes.norm(dim=1, keepdim=True).clamp(min=1e-12)
    cos = unit @ unit.T
    return torch.where(cos > SAME, torch.ones_like(cos), cos)


def cluster_loss(lam: float, names: list[str]):
    """The local objective: cross-entropy - lam <c, w> / ||w|| over the parameters ``names`` (c from the state
    the client received: a constant), which is - lam sum_j a_j cos(w, w_j) for c = sum_j a_j w_j / ||w_j||."""

    def loss(params, received, buffers, x, y, forward):
        logits, new_buffers = forward(params, buffers, x)
        w = torch.cat([params[n].flatten() for n in names])
        c = torch.cat([received[CLUSTER + n].flatten() for n in names])
        return F.cross_entropy(logits, y) - lam * (c @ w) / w.norm(), new_buffers

    return loss


class PFedGraph(Algorithm):
    @staticmethod
    def check_config(cfg) -> None:
        check(cfg.alpha > 0, "algorithm.alpha", cfg.alpha, "must be > 0 (the graph's pull towards the data shares)",
              "0.8")

    def __init__(self, model: nn.Module, num_clients: int, cfg):
        super().__init__(model, num_clients)  # client_params/buffers: each client's aggregate
        self.alpha, self.lam = float(cfg.alpha), float(cfg.lam)
        params = dict(model.named_parameters())
        self.initial = StackedTensors.repeat(params, 1)  # w_0: dw_j = w_j - w_0
        self.trained = StackedTensors.repeat(params, num_clients)  # each client's last trained parameters
        self.cluster = StackedTensors.repeat({n: torch.zeros_like(t) for n, t in params.items()}, num_clients)
        self.register_buffer("graph", torch.zeros(num_clients, num_clients, dtype=torch.float64))  # last rows
        self.train_sizes = torch.ones(num_clients, dtype=torch.float64)  # set_label_counts: for a new client's graph

    def set_label_counts(self, train_counts) -> None:
        self.train_sizes = torch.tensor(train_counts, dtype=torch.float64).sum(1)

    def model_for(self, i: int) -> ClientModel:
        sent = self.own_model(i)
        cluster = {CLUSTER + n: t.clone() for n, t in self.cluster.row(i).items()}
        has_cluster = bool(self.graph[i].any())
        self.count_bytes(down=nbytes({**sent.params, **sent.buffers}) + (nbytes(cluster) if has_cluster else 0))
        return ClientModel({**sent.params, **cluster}, sent.buffers)

    def local_plan(self, epochs: int) -> LocalPlan:
        return LocalPlan.epochs(epochs, steps=(Objective(cluster_loss(self.lam, self.param_names),
                                                         frozenset(self.param_names)),))

    def adapt_plan(self, epochs: int) -> LocalPlan:
        return LocalPlan.epochs(epochs)

    @torch.no_grad()
    def receive_round(self, reports: list[Report]) -> None:
        if not reports:
            return
        clients = [r.client for r in reports]
        models = [ClientModel({n: r.trained.params[n] for n in self.param_names}, r.trained.buffers)
                  for r in reports]
        shares = torch.tensor([r.num_samples for r in reports], dtype=torch.float64)
        graph = self.solve_graph([m.params for m in models], shares / shares.sum())
        aggregates, clusters = self.aggregate(graph, models)
        for k, i in enumerate(clients):
            self.client_params.set_row(i, aggregates[k].params)
            self.client_buffers.set_row(i, aggregates[k].buffers)
            self.trained.set_row(i, models[k].params)
            self.cluster.set_row(i, clusters[k])
            self.graph[i].zero_()
            self.graph[i, clients] = graph[k]
            self.count_bytes(up=nbytes({**models[k].params, **models[k].buffers}))

    def solve_graph(self, params: list[dict], shares: torch.Tensor) -> torch.Tensor:
        """The graph [n, n] among the models ``params`` with data ``shares`` [n] (float64)."""
        changes = torch.stack([torch.cat([(p[n] - self.initial[n][0]).double().flatten() for n in self.param_names])
                               for p in params])
        return graph_rows(cosine_similarity(changes), shares.to(changes.device), self.alpha)

    def aggregate(self, graph: torch.Tensor, models: list[ClientModel]) -> tuple[list[ClientModel], list[dict]]:
        """Per row of ``graph``: sum_j a_j models[j] over every tensor, and the cluster vector sum_j a_j w_j/||w_j||."""
        weights = graph.to(self.initial[self.param_names[0]].device)
        norms = torch.stack([torch.cat([p.double().flatten() for p in m.params.values()]).norm() for m in models])

        def mix(tensors: list[torch.Tensor], row: torch.Tensor) -> torch.Tensor:
            total = torch.einsum("j,j...->...", row, torch.stack(tensors).double())
            return total.to(tensors[0].dtype) if tensors[0].is_floating_point() else total.round().to(tensors[0].dtype)

        aggregates, clusters = [], []
        for row in weights:
            params = {n: mix([m.params[n] for m in models], row) for n in self.param_names}
            buffers = {n: mix([m.buffers[n] for m in models], row) for n in self.buffer_names}
            aggregates.append(ClientModel(params, buffers))
            clusters.append({n: mix([m.params[n] for m in models], row / norms) for n in self.param_names})
        return aggregates, clusters

    def round_metrics(self) -> dict[str, float]:
        """The mean weight a client's graph row gives the client itself (over clients aggregated so far)."""
        rows = self.graph.any(1)
        return {"pfedgraph/self_weight": float(self.graph.diagonal()[rows].mean()) if rows.any() else float("nan")}

    def summary_fields(self, class_counts, groups=None) -> dict:
        """The last graph (row i: the weights of client i's aggregate)."""
        return {"pfedgraph_graph": self.graph.tolist()}

    @torch.no_grad()
    def personalize_new_client(self, initial: ClientModel, fit, rounds: int, generator: torch.Generator
                               ) -> ClientModel:
        """Each local round: train from the current model, solve the new client's graph row against every trained
        client's last trained model and its own (data share: the trained clients' mean), aggregate that row."""
        others = [ClientModel(self.trained.row(j), self.client_buffers.row(j)) for j in range(self.num_clients)]
        sizes = torch.cat([self.train_sizes, self.train_sizes.mean()[None]])
        shares = sizes / sizes.sum()
        model = initial
        for r in range(1, rounds + 1):
            trained = fit(model, r)
            pool = others + [trained]
            row = self.solve_graph([m.params for m in pool], shares)[-1:]
            model = self.aggregate(row, pool)[0][0]
        return model
