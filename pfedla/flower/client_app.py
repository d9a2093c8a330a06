"""The ClientApp: what a SuperNode does for the clients whose data it holds, carried over Flower's records.

Every message runs in a fresh process, which builds ``protocol.NodeWork`` from the node's and the run's config
(the same ``pfedla.assembly.assemble`` the simulation's ``setup`` wraps, without Lightning: what a message
imports, it pays every time); what the node keeps between messages is on its disk (the tensors a method keeps on
the client: pfedla/flower/kept.py, under ``--node-config state-dir=...``). Three messages:

- ``query``: the handshake, the clients this node holds, their facts (no image), its config and its partition's
  fingerprint;
- ``train``: each named client runs its plan from the model it was sent, its kept tensors its own;
- ``evaluate``: each named client's model scored, after score (b)'s adaptation when the task says ``adapt``.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from pfedla.flower.protocol import NodeWork
from pfedla.flower.wire import from_record, to_record

app = ClientApp()


def _node(context: Context, task: dict | None = None) -> NodeWork:
    return NodeWork(dict(context.node_config), dict(context.run_config), task and task["threads"])


def _request(message: Message) -> tuple[dict, dict]:
    """(the task, {client: its flat model}) of a train or evaluate message."""
    task = dict(message.content["task"])
    models = {int(c): from_record(message.content[f"model/{int(c)}"]) for c in task["clients"]}
    return task, models


def _reply(entries: dict, message: Message) -> Message:
    return Message(RecordDict({key: to_record(tensors) for key, tensors in entries.items()}), reply_to=message)


@app.query()
def handshake(message: Message, context: Context) -> Message:
    return Message(RecordDict({"node": ConfigRecord(_node(context).handshake())}), reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    task, models = _request(message)
    return _reply(_node(context, task).train(task, models), message)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    task, models = _request(message)
    return _reply(_node(context, task).evaluate(task, models), message)
