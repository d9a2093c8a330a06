"""The loopback command's own parts, without Flower: how clients are dealt to nodes, and that stopping reaches
every process started, with what those started in sessions of their own (as Flower's SuperExec does)."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from pfedla.flower.local import client_blocks
from pfedla.flower.processes import Processes, alive, descendants, free_ports


def test_clients_are_dealt_to_nodes_in_contiguous_blocks_as_equal_as_they_can_be():
    assert client_blocks(5, 2) == [[0, 1, 2], [3, 4]]
    assert client_blocks(4, 4) == [[0], [1], [2], [3]]
    blocks = client_blocks(20, 3)
    assert sum(blocks, []) == list(range(20)) and sorted(len(b) for b in blocks) == [6, 7, 7]
    with pytest.raises(ValueError, match="--nodes 3: needs 1..2"):
        client_blocks(2, 3)


def test_ports_chosen_together_are_distinct_and_free():
    """The nodes start at once, so their ports are chosen together (were each socket closed before
    the next bind, 500 of the ~28k ephemeral ports would almost always hold repeats)."""
    import socket

    ports = free_ports(500)
    assert len(set(ports)) == 500
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[0]))  # free again once chosen


SPAWNER = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
print(child.pid, flush=True)
time.sleep(600)
"""


def test_stopping_ends_every_process_started_and_their_detached_children(tmp_path):
    processes = Processes()
    leader = processes.start("spawner", [sys.executable, "-c", SPAWNER], tmp_path / "spawner.log", env=None)
    deadline = time.monotonic() + 60
    while not (tmp_path / "spawner.log").read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.1)
    child = int((tmp_path / "spawner.log").read_text().split()[0])
    assert child in descendants(leader.pid) and alive(child)  # in a session of its own, so no process group
    processes.stop(grace=5)
    assert leader.returncode is not None and not alive(child)


def test_stopping_ends_a_child_orphaned_by_its_parents_death_through_the_environment_it_inherited(tmp_path):
    processes = Processes(marker=b"PFEDLA_DEPLOYMENT=test-orphan")
    env = {**os.environ, "PFEDLA_DEPLOYMENT": "test-orphan"}
    leader = processes.start("spawner", [sys.executable, "-c", SPAWNER], tmp_path / "spawner.log", env=env)
    deadline = time.monotonic() + 60
    while not (tmp_path / "spawner.log").read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.1)
    child = int((tmp_path / "spawner.log").read_text().split()[0])
    os.kill(leader.pid, signal.SIGKILL)  # as a crashed SuperNode: its SuperExec is orphaned, no descendant now
    leader.wait()
    assert alive(child) and child not in descendants(leader.pid)
    processes.stop(grace=5)
    assert not alive(child)
