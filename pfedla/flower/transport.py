"""FlowerTransport: ``protocol.Remote`` over a Flower Grid, one message per node and step.

Each request travels as a RecordDict: the task as a ConfigRecord, each client's flat model as an ArrayRecord
(``model/<client>``); each reply's entries come back as ArrayRecords the same way. ``handshake`` learns which node
holds which client and what the server knows of the clients (their facts, no image), and refuses nodes whose
partitions differ.
"""

from __future__ import annotations

import time

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from pfedla.datasets.federated import FederatedData
from pfedla.flower.protocol import DeploymentError, Remote, Request, node_of_clients, server_federation
from pfedla.flower.wire import from_record, to_record

TIMEOUT = 3600.0  # seconds a step waits for its nodes' replies
POLL = 0.2  # seconds between two asks for replies (Grid.send_and_receive waits 3 s: on average 1.5 s a step lost)
MESSAGE_TYPES = {"train": MessageType.TRAIN, "evaluate": MessageType.EVALUATE}


class FlowerTransport(Remote):
    """``handshake`` first (the federation the server's module is then set up on), then ``attach`` that module."""

    def __init__(self, grid: Grid, timeout: float = TIMEOUT):
        self.grid, self.timeout, self.node_of = grid, timeout, {}

    def handshake(self, cfg, wait: float = 120.0) -> FederatedData:
        """The federation of ``cfg``'s clients as their nodes describe it (no image), asking nodes as they connect
        until every client is held, for at most ``wait`` seconds; learns {client: node}. Nodes that run another
        federation than ``cfg``, disagree on the partition or hold a client twice are refused."""
        num_clients = cfg.federation.num_clients
        deadline, answers = time.monotonic() + wait, {}
        while True:
            new = sorted(set(self.grid.get_node_ids()) - set(answers))
            if new:
                replies = self._exchange({n: (RecordDict({}), MessageType.QUERY) for n in new}, "the handshake")
                answers.update({node: reply.content["node"] for node, reply in replies.items()})
            node_of = node_of_clients(answers, cfg)
            missing = sorted(set(range(num_clients)) - set(node_of))
            if not missing:
                self.node_of = node_of
                return server_federation(answers, num_clients)
            if time.monotonic() > deadline:
                raise DeploymentError(f"no SuperNode holds client {missing[0]} after {wait:.0f} s ({len(answers)} "
                                      f"connected; clients 0..{num_clients - 1} must each be on one node)")
            time.sleep(1.0)

    def attach(self, module) -> None:
        """Serve ``module``'s rounds (its FederatedModule, set up on the handshake's federation)."""
        super().__init__(module, self._flower_exchange, self.node_of)

    def _flower_exchange(self, message_type: str, requests: dict[int, Request], what: str) -> dict[int, dict]:
        messages = {}
        for node, request in requests.items():
            content = RecordDict({"task": ConfigRecord(request.task)})
            for c, tensors in request.models.items():
                content[f"model/{c}"] = to_record(tensors)
            messages[node] = (content, MESSAGE_TYPES[message_type])
        replies = self._exchange(messages, what)
        return {node: {key: from_record(record) for key, record in reply.content.array_records.items()}
                for node, reply in replies.items()}

    def _exchange(self, messages: dict[int, tuple[RecordDict, str]], what: str) -> dict[int, Message]:
        """Send each node its message, wait for every reply; one clear error naming the node otherwise."""
        out = [Message(content, dst_node_id=node, message_type=kind) for node, (content, kind) in messages.items()]
        started = time.monotonic()
        replies = {r.metadata.src_node_id: r for r in self._send_and_receive(out, started + self.timeout)}
        waited = time.monotonic() - started
        for node in messages:
            if node not in replies:
                why = (f"timed out after {self.timeout:.0f} s" if waited >= self.timeout else
                       f"the SuperLink gave up on it after {waited:.0f} s: it went offline")
                raise DeploymentError(f"{self._name(node)} did not answer {what} ({why}); restart it and resume "
                                      "the run from its last checkpoint (resume=<run dir>)")
            if replies[node].has_error():
                raise DeploymentError(f"{self._name(node)} failed in {what}: {replies[node].error.reason}")
        return replies

    def _send_and_receive(self, messages: list[Message], deadline: float) -> list[Message]:
        """Grid.send_and_receive's contract (push, then pull until every message has its reply or the deadline),
        asking every ``POLL`` seconds."""
        ids = list(self.grid.push_messages(messages))
        if len(ids) != len(messages) or not all(ids):  # e.g. a request too large for the SuperLink
            raise DeploymentError(f"the SuperLink accepted {sum(map(bool, ids))} of {len(messages)} messages; see "
                                  "its log")
        waiting, replies = set(ids), []
        while waiting and time.monotonic() < deadline:
            pulled = list(self.grid.pull_messages(waiting))
            replies += pulled
            waiting -= {m.metadata.reply_to_message_id for m in pulled}
            if waiting:
                time.sleep(POLL)
        return replies

    def _name(self, node: int) -> str:
        clients = sorted(c for c, n in self.node_of.items() if n == node)
        return f"SuperNode {node}" + (f" (clients {', '.join(map(str, clients))})" if clients else "")
