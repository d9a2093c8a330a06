"""The ClientApp: what a SuperNode does for the clients whose data it holds.

Every message runs in a fresh process, so each builds the run's data and algorithm from the config (the same
``pfedla.run.setup`` the simulation calls) and keeps nothing between messages. Three messages:

- ``query``: the handshake, the clients this node holds and its partition fingerprint;
- ``train``: each named client runs the plan of ``kind`` from the model it was sent (``local_work``);
- ``evaluate``: each named client's model scored on its validation and test splits (``score_models``).
"""

from __future__ import annotations

import os

import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from pfedla.algorithms.stacked import ClientModel
from pfedla.compute import choose_compute
from pfedla.flower.runconfig import compose_run, node_clients
from pfedla.flower.wire import model_record, split_model, to_record
from pfedla.transport import local_work, plan_for, score_models

app = ClientApp()


class Node:
    """The run as this node sees it: config, its clients, the data (the partition's, on the CPU in the run's
    layout), the algorithm (for its plans) and the engine."""

    def __init__(self, context: Context):
        from pfedla.run import setup

        root = context.node_config.get("data-root")
        if root:
            os.environ["PFEDLA_DATA_ROOT"] = str(root)
        # the run's overrides, then the node's own (--node-config 'overrides="dataset.root=/site/data"'); the
        # handshake's fingerprint shows whether the node still holds the run's partition
        self.cfg = compose_run(f'{context.run_config["overrides"]} {context.node_config.get("overrides", "")}')
        self.clients = node_clients(context.node_config)
        module = setup(self.cfg)
        self.algorithm, self.engine = module.algorithm, module.engine
        self.engine.compute = choose_compute(self.cfg.trainer, module.model, torch.device("cpu"),
                                             self.engine.channels_last)
        self.data = module.data.to(torch.device("cpu"), self.engine.compute)
        outside = [c for c in self.clients if not 0 <= c < self.data.num_clients]
        if outside:
            raise ValueError(f"this SuperNode names client {outside[0]}, but the run has clients 0.."
                             f"{self.data.num_clients - 1}")

    def check_asked(self, asked: list[int]) -> None:
        foreign = sorted(set(asked) - set(self.clients))
        if foreign:
            raise ValueError(f"asked for client {foreign[0]}, which this SuperNode does not hold ({self.clients})")


def _received(message: Message, context: Context) -> tuple[ConfigRecord, Node, dict[int, ClientModel]]:
    """(the task, this node, {client: the model the server sent it}) of a train or evaluate message."""
    task = message.content["task"]
    torch.set_num_threads(int(task["threads"]))  # the server's count: the same ops round the same way
    node = Node(context)
    clients = [int(c) for c in task["clients"]]
    node.check_asked(clients)
    models = {}
    for c in clients:
        params, buffers, _ = split_model(message.content[f"model/{c}"])
        models[c] = ClientModel(params, buffers)
    return task, node, models


@app.query()
def handshake(message: Message, context: Context) -> Message:
    node = Node(context)
    reply = ConfigRecord({"clients": node.clients, "fingerprint": node.data.fingerprint})
    return Message(RecordDict({"node": reply}), reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    task, node, sent = _received(message, context)
    clients = list(sent)
    plan = plan_for(node.algorithm, str(task["kind"]), node.cfg.client.epochs)
    results = local_work(node.engine, plan, node.data, clients, sent, node.cfg.client, node.cfg.seed,
                         int(task["round"]), int(task["stream"]))
    content = RecordDict({f"trained/{c}": model_record(params, buffers, loss=loss)
                          for c, (params, buffers, loss) in zip(clients, results)})
    return Message(content, reply_to=message)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    _, node, models = _received(message, context)
    clients = list(models)
    accs = score_models(node.engine, node.data, clients, list(models.values()), torch.device("cpu"))
    return Message(RecordDict({"accs": to_record({split: a[clients] for split, a in accs.items()})}),
                   reply_to=message)

