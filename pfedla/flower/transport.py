"""FlowerTransport: the round's clients reached through a Flower Grid, one message per node and step."""

from __future__ import annotations

import time

import torch
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from pfedla.algorithms.stacked import ClientModel
from pfedla.flower.wire import from_record, model_record, split_model

TIMEOUT = 3600.0  # seconds a step waits for its nodes' replies


class DeploymentError(RuntimeError):
    """A node that did not answer, answered with an error, or holds other data than the server's run."""


class FlowerTransport:
    """``pfedla.transport``'s interface over a Flower Grid. ``handshake`` learns which node holds which client and
    refuses a node whose partition differs from the server's."""

    def __init__(self, grid: Grid, num_clients: int, fingerprint: str, timeout: float = TIMEOUT):
        self.grid, self.num_clients, self.fingerprint, self.timeout = grid, num_clients, fingerprint, timeout
        self.node_of: dict[int, int] = {}

    def handshake(self, wait: float = 120.0) -> dict[int, int]:
        """{client: node id} from the connected nodes' answers (each client on exactly one node), asking nodes as
        they connect until every client is held, for at most ``wait`` seconds."""
        deadline, answers = time.monotonic() + wait, {}
        while True:
            new = sorted(set(self.grid.get_node_ids()) - set(answers))
            if new:
                replies = self._exchange({n: (RecordDict({}), MessageType.QUERY) for n in new}, "the handshake")
                answers.update({node: reply.content["node"] for node, reply in replies.items()})
            node_of: dict[int, int] = {}
            for node, info in sorted(answers.items()):
                if info["fingerprint"] != self.fingerprint:
                    raise DeploymentError(f"SuperNode {node} holds partition {info['fingerprint']}, the server's run "
                                          f"{self.fingerprint}: start it with the run's data and config")
                for c in info["clients"]:
                    if int(c) in node_of:
                        raise DeploymentError(f"client {c} is held by SuperNodes {node_of[int(c)]} and {node}")
                    node_of[int(c)] = node
            missing = sorted(set(range(self.num_clients)) - set(node_of))
            if not missing:
                self.node_of = node_of
                return node_of
            if time.monotonic() > deadline:
                raise DeploymentError(f"no SuperNode holds client {missing[0]} after {wait:.0f} s ({len(answers)} "
                                      f"connected; clients 0..{self.num_clients - 1} must each be on one node)")
            time.sleep(1.0)

    def train(self, round_idx: int, clients: list[int], sent: dict[int, ClientModel], kind: str, stream: int):
        by_node = self._by_node(clients)
        replies = self._send_models(by_node, sent, MessageType.TRAIN, f"round {round_idx} ({kind})", kind=kind,
                                    round=round_idx, stream=stream)
        out = {}
        for node, mine in by_node.items():
            for c in mine:
                params, buffers, extra = split_model(replies[node].content[f"trained/{c}"])
                out[c] = (params, buffers, extra["loss"])
        return [out[c] for c in clients]

    def score(self, clients: list[int], models: list[ClientModel]) -> dict[str, torch.Tensor]:
        by_node = self._by_node(clients)
        replies = self._send_models(by_node, dict(zip(clients, models)), MessageType.EVALUATE, "evaluation")
        out = {split: torch.zeros(self.num_clients) for split in ("val", "test")}
        for node, mine in by_node.items():
            accs = from_record(replies[node].content["accs"])
            for split in out:
                out[split][mine] = accs[split]
        return out

    # --- plumbing ------------------------------------------------------------------------------------
    def _by_node(self, clients: list[int]) -> dict[int, list[int]]:
        by_node: dict[int, list[int]] = {}
        for c in clients:
            by_node.setdefault(self.node_of[c], []).append(c)
        return by_node

    def _send_models(self, by_node: dict[int, list[int]], models: dict[int, ClientModel], message_type: str,
                     what: str, **task) -> dict[int, Message]:
        """One ``message_type`` message per node: its clients' models, the task (clients, this process's thread count,
        ``task``); the replies by node."""
        messages = {}
        for node, mine in by_node.items():
            content = RecordDict({"task": ConfigRecord({"clients": mine, "threads": torch.get_num_threads(),
                                                        **task})})
            for c in mine:
                content[f"model/{c}"] = model_record(models[c].params, models[c].buffers)
            messages[node] = (content, message_type)
        return self._exchange(messages, what)

    def _exchange(self, messages: dict[int, tuple[RecordDict, str]], what: str) -> dict[int, Message]:
        """Send each node its message, wait for every reply; one clear error naming the node otherwise."""
        out = [Message(content, dst_node_id=node, message_type=kind) for node, (content, kind) in messages.items()]
        started = time.monotonic()
        replies = {r.metadata.src_node_id: r for r in self.grid.send_and_receive(out, timeout=self.timeout)}
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

    def _name(self, node: int) -> str:
        clients = sorted(c for c, n in self.node_of.items() if n == node)
        return f"SuperNode {node}" + (f" (clients {', '.join(map(str, clients))})" if clients else "")
