"""A real deployment on Flower (the ``flower`` extra): the server's round runs in a ``ServerApp``, each client's
local work in a ``ClientApp`` on the SuperNode that holds its data.

- wire.py        tensors <-> Flower records (bytes only move: a deployment equals the simulation bit for bit)
- client_app.py  the ClientApp: handshake (which clients a node holds, its partition fingerprint), local work,
                 scores; the same ``pfedla.transport.local_work``/``score_models`` the simulation runs
- server_app.py  the ServerApp: composes the run's config, runs the FederatedModule with FlowerTransport
- transport.py   FlowerTransport: the round's clients reached through the Flower Grid, node by node
- local.py       ``python -m pfedla.flower local``: a SuperLink and N SuperNodes on loopback, one run, all stopped
"""
