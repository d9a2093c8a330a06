"""Where a client's local work runs: the seam between the server's round and the clients.

The round (pfedla/server.py) sends each sampled client what ``algorithm.model_for(i)`` made and gets its
report back; it never touches client data itself. A transport carries that::

    transport.train(round_idx, clients, sent, kind, stream) -> [(params', buffers', loss)]  # one per client
    transport.score(clients, models) -> {"val": accs[N], "test": accs[N]}  # models: algorithm.scored_parts,
                                                                         # composed where the clients are
    transport.adapted_score(round_idx, clients, models, stream) -> the same, of the models after score (b)'s
                                                                   local adaptation (never sent back)

``kind`` names the plan the client runs (``PLANS``: the round's ``local_plan`` or score (b)'s ``adapt_plan``);
the client builds it from the algorithm's options itself, so only tensors and names travel. ``InProcess`` is
the simulation: every client's data is in this process and its work runs on the run's engine. A deployment
(each client's data on its own machine) runs the very same ``local_work`` and ``score_models`` there.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pfedla.algorithms.base import Algorithm, ClientData, LocalPlan
from pfedla.algorithms.stacked import ClientModel
from pfedla.datasets import FederatedData
from pfedla.engines import Engine
from pfedla.engines.batches import STREAM_PREPARE, client_generator
from pfedla.engines.evaluation import features_of, mean_loss

TrainResult = tuple[dict, dict, torch.Tensor]
PLANS = {"local": Algorithm.local_plan, "adapt": Algorithm.adapt_plan}  # kind -> the plan a client runs


def all_finite(params: dict, buffers: dict, loss: torch.Tensor) -> torch.Tensor:
    """A 0-d bool tensor (no host sync): are the loss and every floating tensor finite? An update that is not is
    rejected (client.on_nonfinite), and a node keeps none of it (pfedla/flower/kept.py)."""
    checks = [torch.isfinite(loss).all()] + [torch.isfinite(t).all() for d in (params, buffers) for t in d.values()
                                             if t.is_floating_point()]
    return torch.stack(checks).all()


def plan_for(algorithm: Algorithm, kind: str, epochs: int) -> LocalPlan:
    """The plan of ``kind`` (``PLANS``) for ``algorithm`` with ``epochs`` (client.epochs)."""
    return getattr(algorithm, PLANS[kind].__name__)(epochs)


def local_work(engine: Engine, plan: LocalPlan, data: FederatedData, clients: list[int],
               sent: dict[int, ClientModel], client_cfg, seed: int, round_idx: int, stream: int,
               progress: Callable = lambda done, total: None) -> list[TrainResult]:
    """Each client (a position in ``data``) runs ``plan`` (with ``client_cfg``: client.*) starting exactly from
    ``sent[i]`` on its own data: the plan's ``prepare``, training on the engine, its ``finish``. Returns
    (params, buffers, loss) per client, with what ``prepare`` and ``finish`` add to the upload in params."""
    if not clients:  # a rank with no client this round (fewer sampled clients than ranks)
        return []
    model, compute = engine.model, engine.compute
    added: dict[int, dict] = {i: {} for i in clients}
    if plan.prepare is not None:  # the client's own work on its own data, before it trains
        sent = dict(sent)
        for i in clients:
            val_x, val_y = data.val_x[i], data.val_y[i]
            score = lambda m, x=val_x, y=val_y: mean_loss(model, m.params, m.buffers, x, y, compute)
            own = ClientData(score, data.train_x[i], data.train_y[i],
                             client_generator(seed, round_idx, i, STREAM_PREPARE), client_cfg.batch_size)
            sent[i], added[i] = plan.prepare(sent[i], own)
    results = engine.train(
        [(sent[i].params, sent[i].buffers) for i in clients],
        [(data.train_x[i], data.train_y[i]) for i in clients],
        [client_generator(seed, round_idx, i, stream) for i in clients],
        progress=progress, **plan.training_args(client_cfg),
    )
    if plan.finish is not None:  # the client's own work on its train data, after it trained
        features = lambda m, x: features_of(model, m.params, m.buffers, x, compute=compute)
        for i, (params, buffers, _) in zip(clients, results):
            added[i].update(plan.finish(ClientModel(params, buffers), data.train_x[i], data.train_y[i], features))
    return [({**params, **added[i]}, buffers, loss) for i, (params, buffers, loss) in zip(clients, results)]


@torch.inference_mode()
def score_models(engine: Engine, data: FederatedData, clients: list[int], models: list[ClientModel],
                 device: torch.device) -> dict[str, torch.Tensor]:
    """{split: accuracy [N] (zeros for clients not in ``clients``)} of ``data``'s clients (by position) on their
    validation and test splits, each scored with its model of ``models``."""
    # imported here: torchmetrics imports torchvision's models, seconds that a deployment's training messages
    # (a fresh process each) need not pay
    from torchmetrics.functional.classification import multiclass_accuracy

    out = {}
    for split in ("val", "test"):
        xs, ys = data.split(split)
        preds = engine.predict([(m.params, m.buffers) for m in models], [xs[i] for i in clients])
        accs = torch.zeros(data.num_clients, device=device)
        for i, p in zip(clients, preds):
            accs[i] = multiclass_accuracy(p, ys[i], num_classes=data.num_classes, average="micro")
        out[split] = accs
    return out


class InProcess:
    """The simulation's transport: the clients of ``module`` (a FederatedModule) work in this process, on its data
    and its engine."""

    def __init__(self, module):
        self.module = module

    def train(self, round_idx: int, clients: list[int], sent: dict[int, ClientModel], kind: str,
              stream: int) -> list[TrainResult]:
        m = self.module
        plan = plan_for(m.algorithm, kind, m.cfg.client.epochs)
        return local_work(m.engine, plan, m.data, clients, sent, m.cfg.client, m.cfg.seed, round_idx, stream,
                          m.client_progress)

    def score(self, clients: list[int], models: list[ClientModel]) -> dict[str, torch.Tensor]:
        """Scores (a): ``models`` are the algorithm's ``scored_parts``, composed here, where the clients are."""
        composed = [self.module.algorithm.compose(m) for m in models]
        return score_models(self.module.engine, self.module.data, clients, composed, self.module.device)

    def adapted_score(self, round_idx: int, clients: list[int], models: list[ClientModel], stream: int
                      ) -> dict[str, torch.Tensor]:
        composed = [self.module.algorithm.compose(m) for m in models]
        trained = self.train(round_idx, clients, dict(zip(clients, composed)), "adapt", stream)
        return score_models(self.module.engine, self.module.data, clients, [ClientModel(p, b) for p, b, _ in trained],
                            self.module.device)
