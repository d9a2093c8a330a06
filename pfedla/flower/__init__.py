"""A real deployment on Flower (the ``flower`` extra): the server's round runs in a ``ServerApp``, each client's
local work in a ``ClientApp`` on the SuperNode that holds its data.

- protocol.py    the protocol as plain data, without Flower: ``Remote`` (the server's transport over any exchange)
                 and ``NodeWork`` (a node's side: the same ``local_work``/``score_models`` the simulation runs)
- wire.py        tensors <-> Flower records (bytes only move: a deployment equals the simulation bit for bit)
- client_app.py  the ClientApp: NodeWork's handshake, train and evaluate over Flower messages
- server_app.py  the ServerApp: composes the run's config, runs the FederatedModule with FlowerTransport
- transport.py   FlowerTransport: Remote over the Flower Grid, node by node, and the handshake
- kept.py        what a node keeps of its clients' models (ClientModel.kept): versions on its disk
- local.py       ``python -m pfedla.flower local``: a SuperLink and N SuperNodes on loopback, one run, all stopped
"""
