"""A real deployment on loopback equals the simulation bit for bit: a SuperLink and two SuperNodes as processes
(python -m pfedla.flower local), against python -m pfedla.run, both in the flower extra's environment
(.venv-flower, `make install-flower`) with the same thread count."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
FLOWER_PYTHON = REPO / ".venv-flower" / "bin" / "python"
RUN = ["dataset=synthetic", "federation.num_clients=2", "federation.rounds=2", "logger=none",
       "trainer.progress_bar=false", "trainer.accelerator=cpu", "federation.adapt_every=2", "model=cnn_bn"]

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not FLOWER_PYTHON.is_file(), reason="no .venv-flower (make install-flower)")]


MARK = "PFEDLA_TEST_RUN"  # every process a test's command starts inherits it, Flower's own included


def flower_env(tmp_path: Path) -> dict:
    """The environment of a test's command: one thread, no W&B, and the test's mark (its tmp_path), so that the
    checks below see this test's processes only, whatever else runs on the machine (another test, a deployment)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", MARK: str(tmp_path)}


def flower_processes(tmp_path: Path) -> set[int]:
    """PIDs of the Flower processes (SuperLink, SuperNodes, SuperExec, ServerApp, ClientApps, the command) that
    the test of ``tmp_path`` started and that still run."""
    mark, out = f"{MARK}={tmp_path}".encode(), set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                command = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
                marked = mark in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if marked and (b"flower-super" in command or b"flwr-" in command or b"pfedla.flower" in command):
                out.add(int(entry))
    return out


def _python(args: list[str], tmp_path: Path) -> None:
    done = subprocess.run([str(FLOWER_PYTHON), *args], cwd=tmp_path, env=flower_env(tmp_path), capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def assert_server_states_equal_but_what_clients_keep(deployed: Path, simulated: Path, algorithm: str) -> None:
    """Every tensor of the two last.ckpt equal, except the server's copies of what the clients keep (pFedLA's
    BatchNorm statistics, HeurpFedLA's retained layers too, FedPer's head), which never reached the server in the
    deployment: FedPer's head rows are still the one initial head every client started from."""
    ckpt = {d: torch.load(d / "checkpoints/last.ckpt", weights_only=True)["state_dict"] for d in (deployed, simulated)}
    assert ckpt[deployed].keys() == ckpt[simulated].keys()
    differ = {k for k in ckpt[simulated] if not torch.equal(ckpt[deployed][k], ckpt[simulated][k])}
    statistics = {k for k in ckpt[simulated] if k.startswith("algorithm.client_buffers.")}
    if algorithm == "pfedla":  # BatchNorm statistics, never mixed
        assert differ == statistics, differ
    elif algorithm == "heurpfedla":  # and k=2 layers retained per client: weight and bias (conv1/bn1 here)
        assert statistics < differ and all(k.startswith("algorithm.client_params.") for k in differ - statistics)
    else:
        assert differ == {"algorithm.client_params.fc3__weight", "algorithm.client_params.fc3__bias"}, differ
        for k in differ:
            rows = ckpt[deployed][k]
            assert all(torch.equal(row, rows[0]) for row in rows) and not torch.equal(ckpt[simulated][k][0],
                                                                                      ckpt[simulated][k][1])


TLS_WITH_AN_INTRUDER = """
from pathlib import Path
from pfedla.flower.local import deploy
deploy({overrides!r}, 2, Path({run!r}), logs=Path({logs!r}), tls=True, unregistered=1, timeout=900)
"""


@pytest.mark.parametrize("algorithm", ["pfedla", "heurpfedla", "fedper"])
def test_a_deployment_on_loopback_equals_the_simulation_bit_for_bit(tmp_path, algorithm):
    """pFedLA's run goes over TLS with SuperNode authentication (credentials made for it), and a third SuperNode
    whose key was never registered is refused; the others use the command line, without TLS."""
    overrides = [*RUN, f"algorithm={algorithm}"]
    logs = tmp_path / "deployed/flower_logs"
    if algorithm == "pfedla":
        _python(["-c", TLS_WITH_AN_INTRUDER.format(overrides=overrides, run=str(tmp_path / "deployed"),
                                                   logs=str(logs))], tmp_path)
        assert "running on https://127.0.0.1" in (logs / "superlink.log").read_text()
        refused = (logs / "unregistered0.log").read_text()
        assert "Failed to activate SuperNode" in refused, refused[-2000:]
        assert "No SuperNode found with the given public key" in (logs / "superlink.log").read_text()
    else:
        _python(["-m", "pfedla.flower", "local", "--nodes", "2", "--run-dir", str(tmp_path / "deployed"), "--",
                 *overrides], tmp_path)
    assert not flower_processes(tmp_path), "the command left Flower processes running"
    assert (logs / "supernode0.log").is_file() and (logs / "supernode1.log").is_file()
    _python(["-m", "pfedla.run", *overrides, "trainer.devices=1", f"hydra.run.dir={tmp_path / 'simulated'}"],
            tmp_path)

    deployed, simulated = tmp_path / "deployed", tmp_path / "simulated"
    assert (deployed / "metrics.csv").read_text() == (simulated / "metrics.csv").read_text()
    # the server ran on the clients' facts from the handshake (it loads no data): the same partition to the count
    assert (deployed / "partition.json").read_text() == (simulated / "partition.json").read_text()
    if algorithm != "fedper":
        a, b = np.load(deployed / "alpha.npz"), np.load(simulated / "alpha.npz")
        assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
    assert_server_states_equal_but_what_clients_keep(deployed, simulated, algorithm)
    summaries = [json.loads((d / "summary.json").read_text()) for d in (deployed, simulated)]
    for s in summaries:
        for key in ("wall_seconds", "wall_seconds_process", "timing", "config"):
            s.pop(key)
    assert summaries[0] == summaries[1]


def test_a_node_on_another_federation_is_refused_naming_the_key(tmp_path):
    script = f"""
from pathlib import Path
from pfedla.flower.local import deploy
try:
    deploy({[*RUN, "federation.rounds=1"]!r}, 2, Path({str(tmp_path / "run")!r}), node_overrides={{1: "seed=7"}},
           logs=Path({str(tmp_path / "logs")!r}))
except RuntimeError as err:
    print("REFUSED", err)
"""
    done = subprocess.run([str(FLOWER_PYTHON), "-c", script], cwd=tmp_path, env=flower_env(tmp_path),
                          capture_output=True, text=True, timeout=900)
    assert not flower_processes(tmp_path), "the command left Flower processes running"
    assert "REFUSED" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    message = done.stdout[done.stdout.index("REFUSED"):]
    assert "runs another federation than the server's (seed: 0 -> 7, server -> node)" in message, message
    assert not (tmp_path / "run/metrics.csv").exists()  # refused before the first round


KILL_NODE_ONE = """
import os, signal, threading, time
from pathlib import Path
from pfedla.flower.local import deploy
run = Path({run!r})

def kill_node_holding_client_1():  # once round 2 is in metrics.csv: SIGKILL, as a crash would (this test's node)
    mark = ("PFEDLA_TEST_RUN=" + os.environ["PFEDLA_TEST_RUN"]).encode()
    while not (run / "metrics.csv").exists() or len((run / "metrics.csv").read_text().splitlines()) < 3:
        time.sleep(0.2)
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = Path(f"/proc/{{entry}}/cmdline").read_bytes().replace(b"\\0", b" ")
            ours = mark in Path(f"/proc/{{entry}}/environ").read_bytes().split(b"\\0")
        except OSError:
            continue
        if ours and int(entry) != os.getpid() and b"--node-config" in command and b'clients="1"' in command:
            os.kill(int(entry), signal.SIGKILL)

threading.Thread(target=kill_node_holding_client_1, daemon=True).start()
try:
    deploy({overrides!r}, 2, run, logs=Path({logs!r}), timeout=900)
except RuntimeError as err:
    print("STOPPED", err)
"""


def test_a_supernode_killed_mid_run_stops_it_by_name_and_resume_gives_the_uninterrupted_run(tmp_path):
    """HeurpFedLA: the restarted node recovers its clients' retained layers from its state directory; without
    that directory, the resumed run stops naming the node and the client whose layers it lost."""
    overrides = [*RUN, "federation.rounds=5", "checkpoint.every=1", "algorithm=heurpfedla"]
    run_dir, env = tmp_path / "deployed", flower_env(tmp_path)
    script = KILL_NODE_ONE.format(run=str(run_dir), overrides=overrides, logs=str(tmp_path / "logs"))
    done = subprocess.run([str(FLOWER_PYTHON), "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=1200)
    assert "STOPPED" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    message = done.stdout[done.stdout.index("STOPPED"):]
    assert "(clients 1) did not answer round" in message and "resume=" in message, message
    assert not (run_dir / "summary.json").exists() and (run_dir / "checkpoints/last.ckpt").is_file()
    assert not flower_processes(tmp_path), "the command left Flower processes running"

    # restart the nodes and resume from the last checkpoint: the run an uninterrupted one would have been
    _python(["-m", "pfedla.flower", "local", "--nodes", "2", "--run-dir", str(run_dir), "--", *overrides,
             f"resume={run_dir}"], tmp_path)
    _python(["-m", "pfedla.run", *overrides, "trainer.devices=1", f"hydra.run.dir={tmp_path / 'simulated'}"],
            tmp_path)
    assert (run_dir / "metrics.csv").read_text() == (tmp_path / "simulated/metrics.csv").read_text()
    assert_server_states_equal_but_what_clients_keep(run_dir, tmp_path / "simulated", "heurpfedla")
    assert not flower_processes(tmp_path)

    # a node whose state directory is gone cannot give client 1 its retained layers back: one error, by name
    shutil.rmtree(run_dir / "flower_nodes/node1")
    longer = [o if o != "federation.rounds=5" else "federation.rounds=6" for o in overrides]
    done = subprocess.run([str(FLOWER_PYTHON), "-m", "pfedla.flower", "local", "--nodes", "2", "--run-dir",
                           str(run_dir), "--", *longer, f"resume={run_dir}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode != 0
    assert ("(clients 1) failed in round 6" in done.stderr and "client 1's own layers as of round 5 are not on "
            "this SuperNode" in done.stderr), done.stderr[-3000:]
    assert not flower_processes(tmp_path)


POLLING = """
import time
from types import SimpleNamespace
from pfedla.flower.protocol import DeploymentError
from pfedla.flower.transport import POLL, FlowerTransport

class Grid:  # replies to "a" on the second pull, to "b" on the fourth; "c" never
    def __init__(self):
        self.pulls = 0
    def push_messages(self, messages):
        return [m.id for m in messages]
    def pull_messages(self, ids):
        self.pulls += 1
        due = {{"a": 2, "b": 4}}
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i)) for i in ids
                if due.get(i) == self.pulls]

grid = Grid()
got = FlowerTransport(grid)._send_and_receive([SimpleNamespace(id=i) for i in "ab"], time.monotonic() + 60)
assert sorted(r.metadata.reply_to_message_id for r in got) == ["a", "b"] and grid.pulls == 4, grid.pulls
grid, started = Grid(), time.monotonic()
got = FlowerTransport(grid)._send_and_receive([SimpleNamespace(id=i) for i in "ac"], started + {wait})
waited = time.monotonic() - started
assert [r.metadata.reply_to_message_id for r in got] == ["a"] and {wait} <= waited < {wait} + 2 * POLL + 0.5, waited
assert grid.pulls >= {wait} / POLL / 2, grid.pulls  # it kept asking, every POLL seconds
class Refusing(Grid):  # the SuperLink took one message of two
    def push_messages(self, messages):
        return [messages[0].id, ""]

try:
    FlowerTransport(Refusing())._send_and_receive([SimpleNamespace(id=i) for i in "ab"], time.monotonic() + 60)
except DeploymentError as err:
    assert "accepted 1 of 2 messages" in str(err), err
else:
    raise AssertionError("a message the SuperLink did not take went unnoticed")
print("POLLED", grid.pulls)
"""


def test_the_server_asks_for_replies_until_each_message_has_one_or_the_deadline(tmp_path):
    """FlowerTransport's pull loop keeps Grid.send_and_receive's contract, asking every POLL seconds."""
    _python(["-c", POLLING.format(wait=1.0)], tmp_path)


def test_sigterm_to_the_command_stops_every_process_it_started(tmp_path):
    """`kill <pid>` of python -m pfedla.flower local, once its SuperNodes run: it stops its SuperLink, SuperNodes
    and what they started, as on Ctrl-C or an error, and exits."""
    command = subprocess.Popen([str(FLOWER_PYTHON), "-m", "pfedla.flower", "local", "--nodes", "2", "--run-dir",
                                str(tmp_path / "run"), "--", *RUN, "federation.rounds=50"], cwd=tmp_path,
                               env=flower_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (tmp_path / "run/metrics.csv").exists():
            assert command.poll() is None, command.stdout.read().decode()[-3000:]
            time.sleep(0.5)
        running = flower_processes(tmp_path)
        assert (tmp_path / "run/metrics.csv").exists() and len(running) >= 5, running  # a round in: all are up
        command.send_signal(signal.SIGTERM)
        output = command.communicate(timeout=120)[0].decode()
        assert command.returncode != 0 and "Terminated" in output, output[-3000:]
        assert not flower_processes(tmp_path), "SIGTERM left Flower processes running"
    finally:  # whatever failed, nothing this test started outlives it
        if command.poll() is None:
            command.kill()
        for pid in flower_processes(tmp_path):
            os.kill(pid, signal.SIGKILL)


def test_the_node_message_benchmark_times_both_checkouts_and_prints_json(tmp_path):
    """benchmarks/node_message.py against this very checkout: each side's message ran (every phase timed) and the
    ratio is the two walls'."""
    done = subprocess.run([str(FLOWER_PYTHON), "benchmarks/node_message.py", "--against", str(REPO), "--repeats", "1",
                           *RUN[:2], "logger=none", "trainer.devices=1"], cwd=REPO, env=flower_env(tmp_path),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    for side in ("this", "against"):
        assert all(out[side][k] > 0 for k in ("wall_s", "import_s", "build_s", "train_s"))
        assert out[side]["wall_s"] > out[side]["import_s"] + out[side]["build_s"]
    assert out["wall_ratio"] == round(out["against"]["wall_s"] / out["this"]["wall_s"], 2)
