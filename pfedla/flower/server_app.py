"""The ServerApp: the run's FederatedModule, its clients reached through FlowerTransport.

``flwr run`` passes ``overrides`` (the ``python -m pfedla.run`` arguments, one string) and ``run-dir`` in the run
config; the server composes the config, checks every node in a handshake, and runs the very round the
simulation runs, with checkpoints and ``resume=``, writing the usual run dir. It never loads the data: it runs on
the clients' facts the nodes sent in the handshake (sizes, class counts, groups; pfedla/flower/protocol.py).
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from pfedla.errors import check
from pfedla.flower.protocol import check_same_partition
from pfedla.flower.runconfig import compose_run
from pfedla.flower.transport import FlowerTransport

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    from pfedla.run import run, setup
    from pfedla.validate import validate_config

    cfg = compose_run(str(context.run_config["overrides"]))
    check(cfg.federation.unseen_fraction == 0, "federation.unseen_fraction", cfg.federation.unseen_fraction,
          "must be 0 in a deployment (clients never seen in training are not deployed yet)", "0")
    validate_config(cfg)  # before waiting for nodes
    transport = FlowerTransport(grid)
    federation = transport.handshake(cfg)
    if cfg.resume:
        check_same_partition(Path(str(cfg.resume)).expanduser(), federation.fingerprint)
    module = setup(cfg, federation)
    transport.attach(module)
    module.transport = transport
    run(cfg, str(context.run_config["run-dir"]), module=module)

