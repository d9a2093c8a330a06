"""Every method through the deployment's protocol (pfedla/flower/protocol.py) equals its simulation bit for bit:
the server's ``Remote`` transport and two nodes' ``NodeWork``, each built anew for every message as a fresh
ClientApp process is, exchanging only flat tensors in this process (tests/test_flower.py runs the same protocol
over a real SuperLink and SuperNodes). The server runs on the facts the nodes' handshake gave it, without an
image. What a method keeps on the client never reaches the server."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from pfedla.flower.protocol import EVALUATE, TRAIN, NodeWork, Remote, node_of_clients, server_federation
from pfedla.flower.runconfig import compose_run
from tests.conftest import SYNTHETIC

ALGORITHMS = sorted(p.stem for p in (Path(__file__).resolve().parent.parent / "conf/algorithm").glob("*.yaml"))
CLIENTS = 4  # SYNTHETIC's; nodes 0 and 1 hold clients 0-1 and 2-3
UNCOUNTED = {  # what a deployment of these methods sends beyond the bytes the run counts (comm/bytes_*), and why
    "fedala": "W and the first-adaptation flag go up (the run's summary reports W)",
    "fedpac": "the alignment flag goes down, the client's alignment target up",
    "fedproto": "prototypes travel as dense [classes, features] tensors; the count is the rows of present classes",
    "pfedgraph": "the cluster model goes down from round 1 (zeros before the first graph); the count starts with it",
}


class Crossing(NamedTuple):
    """What one client's part of one message carried: the names the task said it keeps and holds, the names that
    went down and came up, and their bytes."""

    type: str
    kept: set[str]
    held: set[str]
    down: set[str]
    up: set[str]
    down_bytes: int
    up_bytes: int


def _bytes(tensors: dict) -> int:
    return sum(t.numel() * t.element_size() for n, t in tensors.items() if n != "x/loss")


def in_process_nodes(run_config: dict, state: Path):
    """An exchange that hands each node's request to a fresh ``NodeWork`` of that node, and what crossed."""
    node_config = {node: {"clients": f"{2 * node},{2 * node + 1}", "state-dir": str(state / f"node{node}")}
                   for node in (0, 1)}
    crossed: list[Crossing] = []  # per client and message

    def handshake():
        return {node: NodeWork(node_config[node], run_config).handshake() for node in node_config}

    def exchange(message_type, requests, what):
        replies = {}
        for node, request in requests.items():
            work = NodeWork(node_config[node], run_config, request.task["threads"])
            reply = (work.train if message_type == TRAIN else work.evaluate)(request.task, request.models)
            replies[node] = reply
            for c, tensors in request.models.items():
                up = reply[f"trained/{c}"] if message_type == TRAIN else {}
                kept, held = (set(request.task.get(f"{k}/{c}", [])) for k in ("kept", "held"))
                names = lambda flat: {n.split("/", 1)[1] for n in flat if n != "x/loss"}
                crossed.append(Crossing(message_type, kept, held, names(tensors), names(up), _bytes(tensors),
                                        _bytes(up)))
        return replies

    return handshake, exchange, crossed


def run_deployed(overrides: list[str], run_dir: Path, state: Path):
    from pfedla.run import run, setup

    text = shlex.join(overrides)
    cfg = compose_run(text)
    handshake, exchange, crossed = in_process_nodes({"overrides": text, "run-dir": str(run_dir)}, state)
    answers = handshake()
    module = setup(cfg, server_federation(answers, CLIENTS))  # the server's: what the nodes told it, no image
    assert all(t.is_meta for split in ("train", "val", "test") for t in module.data.split(split)[0])
    module.transport = Remote(module, exchange, node_of_clients(answers, cfg))
    run(cfg, str(run_dir), module=module)
    return module, crossed


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_method_through_the_protocol_equals_its_simulation(tmp_path, algorithm):
    from pfedla.run import run, setup

    overrides = [*SYNTHETIC, f"algorithm={algorithm}", "model=cnn_bn", "federation.adapt_every=2",
                 "federation.participation=0.75", "checkpoint.every=1"]
    simulated_cfg = compose_run(shlex.join(overrides))
    simulated = setup(simulated_cfg)
    run(simulated_cfg, str(tmp_path / "simulated"), module=simulated)
    deployed, crossed = run_deployed(overrides, tmp_path / "deployed", tmp_path / "nodes")

    assert (tmp_path / "deployed/metrics.csv").read_text() == (tmp_path / "simulated/metrics.csv").read_text()
    assert {c.type for c in crossed} == {TRAIN, EVALUATE}
    assert all(not c.kept & (c.down | c.up) for c in crossed), "a kept tensor travelled"
    assert all(not c.held & c.down for c in crossed), "a held tensor went down"
    # in training: the server's copy of those tensors never moves (BatchNorm statistics no server aggregates too)
    keeps = algorithm not in ("fedavg", "fedprox", "fedbabu", "perfedavg", "fedpac", "pfedgraph")
    holds = algorithm in ("fedamp", "fedala", "fedfomo")  # own models that go up trained, never down
    assert any(c.kept for c in crossed if c.type == TRAIN) == keeps
    assert any(c.held for c in crossed) == holds
    assert any(c.kept for c in crossed if c.type == EVALUATE) == (keeps or holds)  # scored where they are

    # the bytes the run counts (comm/bytes_*) are what its training messages carried: all of it down, at most
    # that up (what a client did not change stays home), except where a method sends what it does not count
    down = sum(c.down_bytes for c in crossed if c.type == TRAIN)
    up = sum(c.up_bytes for c in crossed if c.type == TRAIN)
    counted = int(deployed.algorithm.bytes_down), int(deployed.algorithm.bytes_up)
    if algorithm in UNCOUNTED:
        assert down > counted[0] or up > counted[1], f"{algorithm} sends no more than it counts: drop it from UNCOUNTED"
    else:
        assert down == counted[0] and up <= counted[1], (down, up, counted)
    a, b = deployed.algorithm.state_dict(), simulated.algorithm.state_dict()
    differ = {k for k in b if not torch.equal(a[k], b[k])}
    if keeps:
        # the server's copies of what clients keep never moved (FedRoD's personal heads are its own stack);
        # everything else is the simulation's
        own = ("personal_head.",) if algorithm == "fedrod" else ("client_params.", "client_buffers.")
        assert differ and all(k.startswith(own) for k in differ), differ
    else:
        assert differ == set(), differ


@pytest.mark.slow
@pytest.mark.parametrize("algorithm, model", [("fedper", "cnn_bn"), ("fedamp", "cnn")])
def test_updates_the_server_rejects_are_not_what_a_node_keeps(tmp_path, algorithm, model):
    """At lr 3: NaN updates from round 2 on. The server rejects them as in simulation, and the nodes keep the
    tensors of the last accepted round (round 1 for most), which the server asks for by that version: FedPer's
    heads (kept), FedAMP's own models without BatchNorm (held alone: up, never down)."""
    from pfedla.run import run, setup

    overrides = [*SYNTHETIC, f"algorithm={algorithm}", f"model={model}", "federation.participation=0.75",
                 "client.lr=3", "federation.rounds=3"]
    simulated_cfg = compose_run(shlex.join(overrides))
    simulated = setup(simulated_cfg)
    run(simulated_cfg, str(tmp_path / "simulated"), module=simulated)
    deployed, crossed = run_deployed(overrides, tmp_path / "deployed", tmp_path / "nodes")
    assert simulated.rejected and deployed.rejected == simulated.rejected
    assert min(r for r, _ in simulated.rejected) == 2  # round 1 accepted: versions 1 to fill from later
    assert (tmp_path / "deployed/metrics.csv").read_text() == (tmp_path / "simulated/metrics.csv").read_text()
    if algorithm == "fedamp":
        assert all(c.held and not c.kept and not c.held & c.down for c in crossed if c.type == TRAIN)
        a, b = deployed.algorithm.state_dict(), simulated.algorithm.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in b)  # held tensors come up: the server's state is the same


NODE_MESSAGE = """
import json, shlex, sys
import torch
from pfedla.flower.protocol import NodeWork, to_node

overrides, state = sys.argv[1], sys.argv[2]
heavy = ("lightning", "torchmetrics", "torchvision", "matplotlib", "scipy", "optuna", "wandb")
loaded = {}
node = NodeWork({"clients": "0,1", "state-dir": state}, {"overrides": overrides, "run-dir": state}, 1)
sent = {c: node.algorithm.personalized_model(c) for c in (0, 1)}
models = {c: to_node(model) for c, model in sent.items()}
kept = {k: v for c, model in sent.items() for k, v in
        {f"kept/{c}": sorted(model.kept), f"version/{c}": 0, f"keep-from/{c}": 0}.items()}
assert kept["kept/0"]  # FedPer keeps its head on the node: the message fills it in and keeps the trained one
task = {"clients": [0, 1], "threads": 1, "round": 1, "stream": 0, **kept}
trained = node.train({**task, "kind": "local"}, models)
assert set(trained) == {"trained/0", "trained/1"}
loaded["train"] = sorted(m for m in heavy if m in sys.modules)
scores = node.evaluate({**task, "adapt": True}, models)
assert scores["accs"]["test"].shape == (2,)
loaded["evaluate"] = sorted(m for m in heavy if m in sys.modules)
print(json.dumps(loaded))
"""


def test_a_node_message_loads_no_lightning_and_a_training_one_no_torchmetrics(tmp_path):
    """A deployment starts a fresh ClientApp process for every message, so what it imports is paid every time:
    Lightning (with torchmetrics and torchvision's models behind it) cost about 2.7 s of each one's 5.3 s here.
    A node builds the run from ``assembly.assemble`` without the LightningModule; only scoring imports
    torchmetrics (the stack's accuracy; with it come torchvision, matplotlib and scipy), and of the methods only
    FedPAC's server step imports scipy."""
    import json
    import subprocess
    import sys

    overrides = shlex.join([*SYNTHETIC, "algorithm=fedper"])
    out = subprocess.run([sys.executable, "-c", NODE_MESSAGE, overrides, str(tmp_path)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded["train"] == []
    assert "torchmetrics" in loaded["evaluate"] and "lightning" not in loaded["evaluate"]
