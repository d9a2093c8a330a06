"""The processes a loopback deployment starts, and how it stops them by PID: free ports on 127.0.0.1 and waiting for
a server to listen on one; ``Processes``, which starts each in a session of its own and stops them with every
descendant (and any orphan carrying the deployment's environment marker), SIGTERM first, SIGKILL after a grace
period. Linux: parents and environments are read from /proc."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports of 127.0.0.1 (all held at once while chosen, so none is chosen twice)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_for_port(port: int, seconds: float, process: subprocess.Popen, what: str) -> None:
    """Until something accepts connections on 127.0.0.1:``port``; an error if ``process`` died first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode} before it listened on port {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not listen on port {port} within {seconds:.0f} s")


@dataclass
class Processes:
    """The processes this command started (each in a session of its own: a Ctrl-C reaches only this command)."""

    started: list[tuple[str, subprocess.Popen]] = field(default_factory=list)
    marker: bytes = b""  # an environment entry every process of this deployment inherits (its FLWR_HOME)

    def start(self, what: str, command: list[str], log: Path, env: dict) -> subprocess.Popen:
        with open(log, "wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.started.append((what, process))
        return process

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to every process started and all their descendants (Flower starts its SuperExec, ServerApp
        and ClientApps in sessions of their own, so a process group is not enough), SIGKILL to what is left after
        ``grace`` seconds; reaps the processes this command started."""
        tree = self.members()
        for pid in tree:
            _kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(alive(pid) for pid in tree):
            for _, process in self.started:
                process.poll()  # reaps a leader that exited, so it stops counting as alive
            time.sleep(0.1)
        tree |= self.members()
        for pid in tree:
            if alive(pid):
                _kill(pid, signal.SIGKILL)
        for _, process in self.started:
            process.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(alive(pid) for pid in tree):  # SIGKILL takes a moment
            time.sleep(0.05)

    def members(self) -> set[int]:
        """The processes started, their descendants, and any process carrying ``marker`` in its environment (a
        child orphaned when its parent died, as a killed SuperNode's SuperExec is)."""
        tree = set()
        for _, process in self.started:
            tree |= {process.pid, *descendants(process.pid)}
        return tree | (with_environment(self.marker) if self.marker else set())


def descendants(pid: int) -> list[int]:
    """Every living descendant of ``pid`` (Linux: parents read from /proc/<pid>/stat)."""
    parent_of = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent_of[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, frontier = [], {pid}
    while frontier:
        children = {child for child, parent in parent_of.items() if parent in frontier}
        out += sorted(children)
        frontier = children
    return out


def with_environment(entry: bytes) -> set[int]:
    """PIDs of this user's processes whose environment holds ``entry`` (Linux: /proc/<pid>/environ)."""
    out = set()
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            try:
                if entry in Path(f"/proc/{name}/environ").read_bytes().split(b"\0"):
                    out.add(int(name))
            except OSError:
                continue
    return out


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped by its parent, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
