"""Clients never seen in training (``federation.unseen_fraction``), personalized for after it.

A seeded set of clients is held out before training starts. The training federation is the other
clients (renumbered 0..N_seen-1; ``FederatedData.client_ids`` keeps their partition ids), so a held-out
client can enter no round, no aggregation and no hypernetwork. After the last round each method
personalizes for every held-out client by its own published recipe
(``Algorithm.personalize_new_client``), spending ``federation.unseen_rounds`` local rounds of that
client's local training (``client.*``, on its train split, on the run's engine), and the client is
scored as a seen one is: (a) the model the recipe produces, (b) that model after the client's local
adaptation. Server state is never changed, so the seen clients' scores and a resumed run are unaffected.
"""

from __future__ import annotations

import numpy as np
import torch

from pfedla.algorithms.stacked import ClientModel
from pfedla.datasets.federated import FederatedData
from pfedla.datasets.partition import rng_for
from pfedla.engines.batches import STREAM_ADAPT_BATCHES, client_generator
from pfedla.fairness import spread
from pfedla.transport import score_models

STREAM_UNSEEN = 10  # which clients are held out
STREAM_UNSEEN_BATCHES = 11  # batch order of the personalization rounds
STREAM_UNSEEN_INIT = 12  # initial values of a held-out client's new parameters (embedding, hypernetwork)


def num_unseen(num_clients: int, fraction: float) -> int:
    return 0 if fraction <= 0 else max(1, round(fraction * num_clients))


def held_out_clients(num_clients: int, fraction: float, seed: int) -> list[int]:
    """Partition ids of the held-out clients: a seeded draw without replacement, sorted."""
    count = num_unseen(num_clients, fraction)
    return sorted(rng_for(seed, STREAM_UNSEEN).choice(num_clients, size=count, replace=False).tolist())


def hold_out(data: FederatedData, fraction: float, seed: int) -> tuple[FederatedData, FederatedData | None]:
    """(the training federation, the held-out clients or None)."""
    unseen = held_out_clients(data.num_clients, fraction, seed)
    if not unseen:
        return data, None
    seen = [i for i in range(data.num_clients) if i not in set(unseen)]
    return data.clients(seen), data.clients(unseen)


def init_generator(seed: int, client_id: int) -> torch.Generator:
    """Initial values of a held-out client's new parameters: fixed by (seed, client)."""
    state = np.random.SeedSequence([seed, STREAM_UNSEEN_INIT, client_id]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def evaluate_unseen(module, unseen: FederatedData) -> dict:
    """Personalize for and score every held-out client with the trained ``module`` (a FederatedModule)."""
    cfg, algorithm = module.cfg, module.algorithm
    unseen = unseen.to(module.device, module.compute)
    cl, rounds = cfg.client, cfg.federation.unseen_rounds
    plan_args = algorithm.adapt_plan(cl.epochs).training_args(cl)
    initial = {n: t.detach() for n, t in module.model.named_parameters()}, dict(module.model.named_buffers())

    def trainer_for(u: int, stream: int):
        def fit(model: ClientModel, round_idx: int) -> ClientModel:
            [(params, buffers, _)] = module.engine.train(
                [(model.params, model.buffers)], [(unseen.train_x[u], unseen.train_y[u])],
                [client_generator(cfg.seed, round_idx, unseen.ids[u], stream)], **plan_args)
            return ClientModel(params, buffers)
        return fit

    clients = list(range(unseen.num_clients))
    models = [algorithm.personalize_new_client(
        ClientModel({n: t.clone() for n, t in initial[0].items()}, {n: t.clone() for n, t in initial[1].items()}),
        trainer_for(u, STREAM_UNSEEN_BATCHES), rounds, init_generator(cfg.seed, unseen.ids[u]),
    ) for u in clients]
    score = lambda scored: score_models(module.engine, unseen, clients, scored, module.device)
    out = {"clients": unseen.ids, "rounds": rounds, **_scores(score(models), unseen, "")}
    if algorithm.adapts:
        adapted = [trainer_for(u, STREAM_ADAPT_BATCHES)(m, rounds + 1) for u, m in zip(clients, models)]
        out.update(_scores(score(adapted), unseen, "adapted_"))
    return out


def _scores(accs: dict[str, torch.Tensor], data: FederatedData, prefix: str) -> dict:
    test = accs["test"].double().cpu()
    sizes = torch.tensor(data.test_sizes, dtype=torch.float64)
    return {
        f"val/{prefix}acc_mean": accs["val"].mean().item(),
        f"test/{prefix}acc_mean": test.mean().item(),
        f"test/{prefix}acc_weighted": ((test * sizes).sum() / sizes.sum()).item(),
        f"{prefix}client_acc": test.tolist(),
        f"{prefix}spread": spread(test.tolist()),
    }
