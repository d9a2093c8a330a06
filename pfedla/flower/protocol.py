"""The deployment's protocol as plain data, apart from Flower: what the server sends each node, what the node
does with it, and what comes back.

- ``Remote`` is ``pfedla.transport``'s interface over an ``exchange(message_type, {node: Request}) -> {node:
  reply}``. It sends each client's model without its kept and held tensors (ClientModel.kept, .held), naming
  them and the version the node fills them from, and puts the server's own copy of the kept ones back into what
  it hands its algorithm (held ones come back up).
- ``NodeWork`` is a node's side: it builds the run from the run's and its own config (the same
  ``pfedla.assembly.assemble`` the simulation's ``setup`` wraps), fills in kept tensors from its state directory
  (pfedla/flower/kept.py), runs ``local_work``/``score_models`` and replies without the kept tensors and
  without those it did not change.
- The handshake: each node answers with the clients it holds and their facts (sizes, class counts, groups: no
  image, pfedla/datasets/federated.py ``client_facts``). ``node_of_clients`` checks the answers and
  ``server_federation`` assembles the federation the server runs on, so the server never loads the data.

FlowerTransport and the ClientApp only carry these over Flower's records and Grid; tests/test_protocol.py runs
every method through ``Remote`` and ``NodeWork`` in one process, against the simulation.

Tensors travel flat, ``{"p/<name>": params, "b/<name>": buffers, "x/<name>": extras}`` per client model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from pfedla.algorithms.stacked import ClientModel
from pfedla.assembly import assemble
from pfedla.compatibility import federation_differences
from pfedla.compute import choose_compute
from pfedla.datasets.federated import FederatedData, client_facts, federation_from_facts
from pfedla.flower.kept import KeptStore, settle
from pfedla.flower.runconfig import compose_run, node_clients
from pfedla.transport import local_work, plan_for, score_models

Tensors = dict[str, torch.Tensor]
TRAIN, EVALUATE = "train", "evaluate"  # the two message types a round sends (Flower's names)
STATE_DIR = Path.home() / ".cache" / "pfedla" / "flower-node"  # --node-config state-dir's default


class DeploymentError(RuntimeError):
    """A node that did not answer, answered with an error, or holds other data than the other nodes or the run."""


@dataclass
class Request:
    """One node's message: the task (flat scalars and lists: Flower's ConfigRecord) and its clients' models."""

    task: dict
    models: dict[int, Tensors]


def flat(params: Tensors, buffers: Tensors, **extra: torch.Tensor) -> Tensors:
    """One client's model (and ``extra`` tensors such as its loss) as one flat dict: names prefixed by part."""
    return {**{f"p/{n}": t for n, t in params.items()}, **{f"b/{n}": t for n, t in buffers.items()},
            **{f"x/{n}": t for n, t in extra.items()}}


def unflat(tensors: Tensors) -> tuple[Tensors, Tensors, Tensors]:
    """(params, buffers, extra) of a ``flat`` dict."""
    part = lambda p: {n[len(p):]: t for n, t in tensors.items() if n.startswith(p)}
    return part("p/"), part("b/"), part("x/")


def to_node(model: ClientModel) -> Tensors:
    """What the server sends of ``model``: all of it but what the client keeps or holds, and the copies the node
    makes of what it is sent (``ClientModel.copied``)."""
    return without(model, model.kept | model.held | model.copied)


def without(model: ClientModel, names: frozenset[str], **extra: torch.Tensor) -> Tensors:
    """``model`` flat, without ``names``: down, without its kept and held tensors; up, without its kept ones and
    those it did not change."""
    return flat({n: t for n, t in model.params.items() if n not in names},
                {n: t for n, t in model.buffers.items() if n not in names}, **extra)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors are the same bits (not just equal values: -0.0 is not 0.0, a NaN is itself)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    bits = lambda t: t.detach().contiguous().reshape(-1).view(torch.uint8)
    return torch.equal(bits(a), bits(b))


def unchanged(trained: ClientModel, sent: ClientModel) -> frozenset[str]:
    """The tensors of ``trained`` that are bit for bit those of ``sent``: the server has them, so they need not
    come back (what a client received and did not train: FedAMP's cloud model, pFedGraph's cluster model, ...)."""
    before = {**sent.params, **sent.buffers}
    return frozenset(n for n, t in {**trained.params, **trained.buffers}.items()
                     if n in before and same_bits(t, before[n]))


def completed(params: Tensors, buffers: Tensors, template: ClientModel, sent: ClientModel, client: int
              ) -> tuple[Tensors, Tensors]:
    """The trained model as the simulation's client returns it: every tensor the plan's result holds
    (``template``, LocalPlan.upload_template), in its order, from the reply, or where it did not come back (kept,
    or unchanged) from what the server sent; a tensor in neither is an error naming the client."""
    def take(names, got: Tensors, had: Tensors) -> Tensors:
        lost = [n for n in names if n not in got and n not in had]
        if lost:
            raise DeploymentError(f"client {client}'s reply lacks {lost[0]}, which the server did not send either")
        return {n: got[n] if n in got else had[n] for n in names}

    return take(template.params, params, sent.params), take(template.buffers, buffers, sent.buffers)


def fill_kept(params: Tensors, buffers: Tensors, names: frozenset[str], source: ClientModel, prefix: str = ""
              ) -> None:
    """Put ``source``'s tensors into ``params`` and ``buffers``, each where it belongs: under each of ``names``,
    ``source``'s tensor of that name without ``prefix`` (ClientModel.kept_prefix)."""
    params.update({n: source.params[n.removeprefix(prefix)] for n in names if n.removeprefix(prefix) in source.params})
    buffers.update({n: source.buffers[n.removeprefix(prefix)] for n in names
                    if n.removeprefix(prefix) in source.buffers})


def node_of_clients(answers: dict[int, dict], cfg=None) -> dict[int, int]:
    """{client: node} from the nodes' handshake answers ({node: NodeWork.handshake()}). Every node must run the
    server's federation (``cfg``'s FEDERATION_KEYS: seed, data, partition, model, algorithm, client; a node's own
    overrides may change only the rest, such as dataset.root) and, since the server holds no data to tell which
    partition is the run's, the nodes must agree on one; each client is on one node."""
    if cfg is not None:
        mine = OmegaConf.to_container(cfg, resolve=True)
        for node, info in sorted(answers.items()):
            differing = federation_differences(mine, json.loads(info["config"]))
            if differing:
                raise DeploymentError(f"SuperNode {node} runs another federation than the server's ("
                                      f"{'; '.join(differing)}, server -> node): drop those overrides of its "
                                      "--node-config")
    nodes_of: dict[str, list[int]] = {}
    for node, info in sorted(answers.items()):
        nodes_of.setdefault(str(info["fingerprint"]), []).append(node)
    if len(nodes_of) > 1:
        which = "; ".join(f"partition {f} on SuperNode {', '.join(map(str, n))}" for f, n in nodes_of.items())
        raise DeploymentError(f"the SuperNodes hold different partitions ({which}): start every node with the "
                              "run's data and config")
    node_of: dict[int, int] = {}
    for node, info in sorted(answers.items()):
        for c in info["clients"]:
            if int(c) in node_of:
                raise DeploymentError(f"client {c} is held by SuperNodes {node_of[int(c)]} and {node}")
            node_of[int(c)] = node
    return node_of


def server_federation(answers: dict[int, dict], num_clients: int) -> FederatedData:
    """The federation the server runs on, from every node's facts (checked by ``node_of_clients``)."""
    return federation_from_facts([json.loads(info["facts"]) for _, info in sorted(answers.items())], num_clients)


def check_same_partition(resume: Path, fingerprint: str) -> None:
    """A resumed run goes on only on the partition it started on: the fingerprint in partition.json of the run
    dir that ``resume`` (a run dir or its checkpoints/last.ckpt) names."""
    run_dir = resume.parent.parent if resume.is_file() else resume
    written = run_dir / "partition.json"
    if not written.is_file():
        raise DeploymentError(f"resume={resume}: no partition.json in {run_dir} to check the SuperNodes' partition "
                              "against; resume from the run dir the run wrote")
    if (before := json.loads(written.read_text())["fingerprint"]) != fingerprint:
        raise DeploymentError(f"the SuperNodes hold partition {fingerprint}, but the run resumed from {run_dir} "
                              f"trained on partition {before}: start them with the run's data and config")


Exchange = Callable[[str, dict[int, Request], str], dict[int, dict[str, Tensors]]]


class Remote:
    """``pfedla.transport``'s interface over ``exchange(message_type, {node: request}, what)`` (``what`` names
    the step in errors), which returns each node's reply: {key: flat tensors}. ``node_of``: {client: node}.
    ``module``: the run's FederatedModule (which version of its kept tensors each client holds)."""

    def __init__(self, module, exchange: Exchange, node_of: dict[int, int] | None = None):
        self.module, self.exchange, self.node_of = module, exchange, dict(node_of or {})
        self.num_clients = module.data.num_clients

    def train(self, round_idx: int, clients: list[int], sent: dict[int, ClientModel], kind: str, stream: int):
        """The round's local training (score (b)'s adaptation is ``adapted_score``)."""
        replies = self._send(clients, sent, TRAIN, f"round {round_idx} ({kind})", round_idx - 1, kind=kind,
                             round=round_idx, stream=stream)
        plan = plan_for(self.module.algorithm, kind, self.module.cfg.client.epochs)
        out = []
        for c in clients:
            params, buffers, extra = unflat(replies[self.node_of[c]][f"trained/{c}"])
            # what did not come back: the kept tensors (the server's copy of them never moves) and those the
            # client did not change, which are what the server sent
            params, buffers = completed(params, buffers, plan.upload_template(sent[c]), sent[c], c)
            out.append((params, buffers, extra["loss"]))
        return out

    def score(self, clients: list[int], models: list[ClientModel]) -> dict[str, torch.Tensor]:
        return self._scores(clients, models, "evaluation", self.module.round)  # after this round's training

    def adapted_score(self, round_idx: int, clients: list[int], models: list[ClientModel], stream: int
                      ) -> dict[str, torch.Tensor]:
        return self._scores(clients, models, "score (b)'s adaptation", round_idx, adapt=True, round=round_idx,
                            stream=stream)

    def _scores(self, clients: list[int], models: list[ClientModel], what: str, through: int, **task
                ) -> dict[str, torch.Tensor]:
        replies = self._send(clients, dict(zip(clients, models)), EVALUATE, what, through, **task)
        out = {split: torch.zeros(self.num_clients) for split in ("val", "test")}
        for node, reply in replies.items():
            mine = [c for c in clients if self.node_of[c] == node]
            for split in out:
                out[split][mine] = reply["accs"][split]
        return out

    def _send(self, clients: list[int], models: dict[int, ClientModel], message_type: str, what: str,
              through: int, **task) -> dict[int, dict[str, Tensors]]:
        """One request per node holding some of ``clients``: their models without their kept and held tensors, and
        the task (clients, this process's thread count, each client's kept and held names and their version as of
        round ``through``, for training also the version the last checkpoint expects, ``task``); the replies by
        node."""
        requests: dict[int, Request] = {}
        for c in clients:
            node = self.node_of[c]
            if node not in requests:
                requests[node] = Request({"clients": [], "threads": torch.get_num_threads(), **task}, {})
            request, model = requests[node], models[c]
            request.task["clients"].append(c)
            if model.kept:
                request.task[f"kept/{c}"] = sorted(model.kept)
            if model.kept or model.copied:
                request.task[f"kept-prefix/{c}"] = model.kept_prefix
            if model.copied:
                request.task[f"copied/{c}"] = sorted(model.copied)
            if model.held:
                request.task[f"held/{c}"] = sorted(model.held)
            if model.kept or model.held:
                request.task[f"version/{c}"] = self.module.last_trained(c, through)
                if message_type == TRAIN:
                    request.task[f"keep-from/{c}"] = self.module.last_trained(c, self.module.checkpointed_round)
            request.models[c] = to_node(model)
        return self.exchange(message_type, requests, what)


class NodeWork:
    """The run as a node sees it: config, its clients, the data (the partition's, on the CPU in the run's
    layout), the algorithm (for its plans), the engine and what it keeps. Built anew for every message, as a
    deployment's fresh ClientApp process does; ``node_config``: the node's (clients, data-root, state-dir,
    overrides), ``run_config``: the run's (overrides, run-dir), ``threads``: the server's torch thread count
    (every request's task carries it)."""

    def __init__(self, node_config: dict, run_config: dict, threads: int | None = None):
        if threads is not None:  # the server's count, before anything runs: the same ops round the same way
            torch.set_num_threads(int(threads))
        root = node_config.get("data-root")
        if root:
            os.environ["PFEDLA_DATA_ROOT"] = str(root)
        # the run's overrides, then the node's own (--node-config 'overrides="dataset.root=/site/data"'); the
        # handshake shows the server this config and the partition's fingerprint (node_of_clients)
        self.cfg = compose_run(f'{run_config["overrides"]} {node_config.get("overrides", "")}')
        self.clients = node_clients(node_config)
        parts = assemble(self.cfg)
        self.algorithm, self.engine = parts.algorithm, parts.engine
        self.engine.compute = choose_compute(self.cfg.trainer, parts.model, torch.device("cpu"),
                                             self.engine.channels_last)
        self.data = parts.data.to(torch.device("cpu"), self.engine.compute)
        outside = [c for c in self.clients if not 0 <= c < self.data.num_clients]
        if outside:
            raise ValueError(f"this SuperNode names client {outside[0]}, but the run has clients 0.."
                             f"{self.data.num_clients - 1}")
        run_key = KeptStore.run_key(str(run_config.get("run-dir", "")), self.data.fingerprint)
        self.kept = KeptStore(Path(node_config.get("state-dir") or STATE_DIR), run_key)

    def handshake(self) -> dict:
        """The clients this node holds, its partition's fingerprint, those clients' facts and the node's resolved
        config (JSON)."""
        return {"clients": self.clients, "fingerprint": self.data.fingerprint,
                "facts": json.dumps(client_facts(self.data, self.clients)),
                "config": json.dumps(OmegaConf.to_container(self.cfg, resolve=True))}

    def train(self, task: dict, models: dict[int, Tensors]) -> dict[str, Tensors]:
        """Each named client runs the plan of ``kind`` from the model it was sent, its kept tensors filled in from
        its own copy, which the trained ones then replace (``settle``); replies without them and without what it
        did not change (the server has that)."""
        sent = self._received(task, models)
        clients, round_idx = list(sent), int(task["round"])
        plan = plan_for(self.algorithm, str(task["kind"]), self.cfg.client.epochs)
        results = local_work(self.engine, plan, self.data, clients, sent, self.cfg.client, self.cfg.seed,
                             round_idx, int(task["stream"]))
        reply = {}
        for c, (params, buffers, loss) in zip(clients, results):
            trained = ClientModel(params, buffers, sent[c].kept, sent[c].kept_prefix)
            if trained.kept or sent[c].held:
                loss = settle(self.kept, c, round_idx, trained, loss, int(task[f"keep-from/{c}"]))
            reply[f"trained/{c}"] = without(trained, trained.kept | unchanged(trained, sent[c]), loss=loss)
        return reply

    def evaluate(self, task: dict, models: dict[int, Tensors]) -> dict[str, Tensors]:
        """Each named client's model scored on its validation and test splits, after score (b)'s adaptation when
        the task says ``adapt`` (the adapted models never leave the node). Each model is composed here from the
        parts the server sent and the tensors this node keeps (``compose``: APFL mixes its local model in)."""
        received = {c: self.algorithm.compose(parts) for c, parts in self._received(task, models).items()}
        clients = list(received)
        if task.get("adapt", False):
            plan = plan_for(self.algorithm, "adapt", self.cfg.client.epochs)
            trained = local_work(self.engine, plan, self.data, clients, received, self.cfg.client, self.cfg.seed,
                                 int(task["round"]), int(task["stream"]))
            received = {c: ClientModel(params, buffers) for c, (params, buffers, _) in zip(clients, trained)}
        accs = score_models(self.engine, self.data, clients, list(received.values()), torch.device("cpu"))
        return {"accs": {split: a[clients] for split, a in accs.items()}}

    def _received(self, task: dict, models: dict[int, Tensors]) -> dict[int, ClientModel]:
        """{client: the model the server sent it, its kept and held tensors filled in from the version the server
        names, then its copied ones made from what it was sent}."""
        clients = [int(c) for c in task["clients"]]
        foreign = sorted(set(clients) - set(self.clients))
        if foreign:
            raise ValueError(f"asked for client {foreign[0]}, which this SuperNode does not hold ({self.clients})")
        out = {}
        for c in clients:
            params, buffers, _ = unflat(models[c])
            kept, prefix = frozenset(task.get(f"kept/{c}", [])), str(task.get(f"kept-prefix/{c}", ""))
            held, copied = frozenset(task.get(f"held/{c}", [])), frozenset(task.get(f"copied/{c}", []))
            stored = kept - copied  # a kept tensor that is also copied starts from the copy: no stored version needed
            if stored or held:
                version = int(task[f"version/{c}"])
                own = self.algorithm.own_model(c) if version == 0 else self.kept.load(c, version)
                fill_kept(params, buffers, stored, own, prefix)
                fill_kept(params, buffers, held, own)
            for n in sorted(copied):  # a copy of the tensor named without the prefix, which came down
                source = n.removeprefix(prefix)
                tensors = params if source in params else buffers
                tensors[n] = tensors[source].clone()
            out[c] = ClientModel(params, buffers, kept, prefix, held, copied)
        return out
