"""``python -m pfedla.flower local --nodes N -- <python -m pfedla.run overrides>``: a real deployment on loopback.

Starts a SuperLink and N SuperNodes as processes of this machine (free ports, a temporary FLWR_HOME; with
``--tls``, TLS and SuperNode authentication with credentials made for the run), the
training federation's clients split into N contiguous blocks, one per node (``--node-config clients=...``);
submits the run with ``flwr run``; waits for it; writes the usual run dir; and stops exactly the processes it
started, with every process they started in turn (by PID), whatever happened: an error, Ctrl-C, or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from pfedla.errors import check
from pfedla.flower.processes import Processes, free_port, free_ports, wait_for_port

APP_DIR = Path(__file__).resolve().parent / "app"  # the Flower App flwr run submits (pfedla/flower/app/)
CONNECTION = "pfedla-local"  # the SuperLink's name in the temporary FLWR_HOME's config.toml


def client_blocks(num_clients: int, nodes: int) -> list[list[int]]:
    """Clients 0..num_clients-1 in ``nodes`` contiguous blocks of sizes as equal as they can be."""
    if not 1 <= nodes <= num_clients:
        raise ValueError(f"--nodes {nodes}: needs 1..{num_clients} (one client at least per node)")
    base, extra = divmod(num_clients, nodes)
    blocks, start = [], 0
    for k in range(nodes):
        size = base + (k < extra)
        blocks.append(list(range(start, start + size)))
        start += size
    return blocks


def training_clients(overrides: list[str]) -> int:
    """The training federation's size for these overrides (checked as a run would be)."""
    from pfedla.flower.runconfig import compose_run
    from pfedla.validate import validate_config

    cfg = compose_run(shlex.join(overrides))
    validate_config(cfg)
    check(cfg.federation.unseen_fraction == 0, "federation.unseen_fraction", cfg.federation.unseen_fraction,
          "must be 0 in a deployment (clients never seen in training are not deployed yet)", "0")
    return cfg.federation.num_clients


def deploy(overrides: list[str], nodes: int, run_dir: Path, timeout: float = 3600.0, data_root: str | None = None,
           logs: Path | None = None, node_overrides: dict[int, str] | None = None, tls: bool = False,
           unregistered: int = 0) -> dict:
    """Run ``overrides`` on a SuperLink and ``nodes`` SuperNodes on loopback; the run's summary.json.
    ``node_overrides``: overrides of node k's own, after the run's. ``tls``: TLS and SuperNode authentication,
    with credentials made for this run (pfedla/flower/tls.py); each node's public key is registered with the
    SuperLink before it starts. ``unregistered`` (with ``tls``): that many more SuperNodes whose keys are not
    registered, started before the run: the SuperLink must refuse them (their logs: unregistered<k>.log)."""
    check(tls or not unregistered, "unregistered", unregistered, "needs tls=True (without authentication every "
          "node is let in)", "tls=True")
    blocks = client_blocks(training_clients(overrides), nodes)
    run_dir = run_dir.resolve()
    bin_dir = Path(sys.executable).parent  # flower-superlink, flower-supernode and flwr of this environment
    with tempfile.TemporaryDirectory(prefix="pfedla-flower-") as scratch:
        home = Path(scratch) / "flwr-home"
        logs = Path(scratch) if logs is None else logs
        logs.mkdir(parents=True, exist_ok=True)
        home.mkdir()
        port = free_port()
        from pfedla.flower.tls import make_credentials  # cryptography comes with the flower extra

        credentials = make_credentials(Path(scratch) / "tls", nodes + unregistered) if tls else None
        security = (f'root-certificates = "{credentials.ca_cert}"' if tls else "insecure = true")
        (home / "config.toml").write_text(f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
                                          f'address = "127.0.0.1:{port}"\n{security}\n')
        env = {**os.environ, "FLWR_HOME": str(home), "FLWR_DISABLE_UPDATE_CHECK": "1",
               "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",  # Flower starts its tools by name
               "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
        # dataset.root's default, made absolute: Flower's processes need not start in this directory
        env["PFEDLA_DATA_ROOT"] = str(Path(data_root or os.environ.get("PFEDLA_DATA_ROOT", "data")).resolve())
        processes = Processes(marker=f"FLWR_HOME={home}".encode())
        sigterm_before = _raise_on_sigterm()
        try:
            link_security = ["--insecure"] if not tls else [
                "--ssl-ca-certfile", str(credentials.ca_cert), "--ssl-certfile", str(credentials.server_cert),
                "--ssl-keyfile", str(credentials.server_key), "--enable-supernode-auth"]
            link = processes.start("the SuperLink", [
                str(bin_dir / "flower-superlink"), *link_security, "--host", "127.0.0.1", "--port", str(port),
                "--disable-runtime-dependency-installation", "--database", str(Path(scratch) / "superlink.db"),
            ], logs / "superlink.log", env)
            wait_for_port(port, 60, link, "the SuperLink")

            def node_security(k: int) -> list[str]:
                if not tls:
                    return ["--insecure"]
                return ["--root-certificates", str(credentials.ca_cert), "--auth-supernode-private-key",
                        str(credentials.node_keys[k][0])]

            for k in range(nodes if tls else 0):  # the SuperLink lets in only the nodes whose keys it knows
                register = subprocess.run([str(bin_dir / "flwr"), "supernode", "register",
                                           str(credentials.node_keys[k][1]), CONNECTION], env=env,
                                          capture_output=True, text=True, timeout=120)
                if register.returncode != 0:
                    raise RuntimeError(f"flwr supernode register (SuperNode {k}) exited {register.returncode}: "
                                       f"{(register.stdout + register.stderr).strip()[-2000:]}")
            node_ports = free_ports(nodes + unregistered)  # every node starts at once, each on its own port
            for k in range(nodes, nodes + unregistered):  # keys the SuperLink was never told about
                processes.start(f"unregistered SuperNode {k - nodes}", [
                    str(bin_dir / "flower-supernode"), *node_security(k), "--superlink", f"127.0.0.1:{port}",
                    "--port", str(node_ports[k]), "--node-config", 'clients="0"',
                ], logs / f"unregistered{k - nodes}.log", env)
            listening = []
            for k, clients in enumerate(blocks):
                node_port = node_ports[k]
                # what the node keeps of its clients' models lives beside the run (a resume finds it there)
                state = run_dir / "flower_nodes" / f"node{k}"
                config = (f'clients="{",".join(map(str, clients))}" data-root="{env["PFEDLA_DATA_ROOT"]}" '
                          f'state-dir="{state}"')
                if (node_overrides or {}).get(k):
                    config += f" overrides={json.dumps(node_overrides[k])}"
                node = processes.start(f"SuperNode {k}", [
                    str(bin_dir / "flower-supernode"), *node_security(k), "--superlink", f"127.0.0.1:{port}",
                    "--port", str(node_port), "--node-config", config,
                ], logs / f"supernode{k}.log", env)
                listening.append((node_port, node, f"SuperNode {k}"))
            for node_port, node, what in listening:
                wait_for_port(node_port, 60, node, what)
            summary = run_dir / "summary.json"
            # a resumed run dir holds the summary of the run it continues: only a newer one says this run finished
            previous = summary.stat().st_mtime_ns if summary.is_file() else None
            run_config = Path(scratch) / "run_config.toml"
            run_config.write_text(f"overrides = {json.dumps(shlex.join(overrides))}\n"
                                  f"run-dir = {json.dumps(str(run_dir))}\n")
            submit = subprocess.run([str(bin_dir / "flwr"), "run", str(APP_DIR), CONNECTION, "--run-config",
                                     str(run_config), "--stream"], env=env, capture_output=True, text=True,
                                    timeout=timeout)
            (logs / "flwr_run.log").write_text(submit.stdout + submit.stderr)
            finished = summary.is_file() and summary.stat().st_mtime_ns != previous
            if submit.returncode != 0 or not finished:
                tail = "\n".join((submit.stdout + submit.stderr).strip().splitlines()[-15:])
                raise RuntimeError(f"the deployed run wrote no {summary} (flwr run exited {submit.returncode}):\n"
                                   f"{tail}")
            return json.loads(summary.read_text())
        finally:
            if sigterm_before is not None:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM cannot cut the stopping short
            processes.stop()
            if sigterm_before is not None:
                signal.signal(signal.SIGTERM, sigterm_before)


class Terminated(BaseException):
    """SIGTERM reached the command: it stops what it started (``deploy``'s ``finally``) and exits."""


def _raise_on_sigterm():
    """In the main thread: SIGTERM raises ``Terminated`` from now on (so a ``finally`` runs, as on Ctrl-C); returns
    the handler it replaced (None elsewhere: only the main thread may set one)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def terminated(signum, frame):
        raise Terminated(f"signal {signum}")

    before = signal.signal(signal.SIGTERM, terminated)
    return signal.SIG_DFL if before is None else before  # None: a handler set outside Python; the default stands in


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pfedla.flower local", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=2, help="SuperNodes to start (default 2)")
    parser.add_argument("--run-dir", type=Path, default=None, help="where the run dir goes (default "
                        "outputs/flower/<date>_<time>)")
    parser.add_argument("--data-root", default=None, help="the nodes' and server's PFEDLA_DATA_ROOT (default: "
                        "$PFEDLA_DATA_ROOT, else ./data)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds the run may take")
    parser.add_argument("--tls", action="store_true", help="TLS and SuperNode authentication, with a CA, the "
                        "SuperLink's certificate and the nodes' keys made for this run (pfedla/flower/tls.py)")
    parser.add_argument("overrides", nargs="*", help="python -m pfedla.run overrides (after --)")
    args = parser.parse_args(argv)
    run_dir = args.run_dir or Path("outputs/flower") / time.strftime("%Y-%m-%d_%H-%M-%S")
    summary = deploy(args.overrides, args.nodes, run_dir, args.timeout, args.data_root, logs=run_dir / "flower_logs",
                     tls=args.tls)
    final = summary.get("final") or {}
    print(f"deployed run on {args.nodes} SuperNodes: {run_dir} (test/acc_mean {final.get('test/acc_mean')})")
