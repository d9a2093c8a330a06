"""What a deployment's message costs a node before and while its clients work: a fresh process, as a SuperNode
starts for every message, imports the ClientApp, builds the run's parts (``NodeWork``) and runs one training
message for its clients. Run side by side with another checkout (``--against``, e.g. a git worktree of an earlier
commit), alternating, so both see the same load; prints JSON.

    git worktree add /tmp/before <commit>
    .venv-flower/bin/python benchmarks/node_message.py --against /tmp/before --repeats 5

Default workload: the headline (+experiment=noniid_dirichlet: Fashion-MNIST, 20 clients), a node holding 2.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pfedla.compute import cpu_model

REPO = Path(__file__).resolve().parent.parent
WORKLOAD = ["+experiment=noniid_dirichlet", "logger=none", "trainer.devices=1"]
MESSAGE = """
import sys, time
started = time.perf_counter()
import pfedla.flower.client_app
from pfedla.flower.protocol import NodeWork
try:
    from pfedla.flower.protocol import to_node
except ImportError:  # a checkout from before it (--against)
    from pfedla.flower.protocol import without_kept as to_node
imported = time.perf_counter()
node = NodeWork({"clients": "0,1", "state-dir": sys.argv[2]}, {"overrides": sys.argv[1], "run-dir": sys.argv[2]}, 1)
built = time.perf_counter()
sent = {c: node.algorithm.personalized_model(c) for c in (0, 1)}
assert not any(m.kept for m in sent.values()), "a method without kept tensors, please"
node.train({"clients": [0, 1], "threads": 1, "round": 1, "stream": 0, "kind": "local"},
           {c: to_node(m) for c, m in sent.items()})
print(imported - started, built - imported, time.perf_counter() - built)
"""


def message(tree: Path, overrides: str, env: dict) -> dict:
    with tempfile.TemporaryDirectory() as state:
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", MESSAGE, overrides, state], cwd=tree,
                              env={**env, "PYTHONPATH": str(tree)}, capture_output=True, text=True)
        wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"the message failed in {tree}:\n{done.stderr[-3000:]}")
    imported, built, trained = map(float, done.stdout.split()[-3:])
    return {"wall_s": wall, "import_s": imported, "build_s": built, "train_s": trained}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", type=Path, required=True, help="the other checkout (its repository root)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("overrides", nargs="*", help="replace the workload's overrides")
    args = parser.parse_args()
    overrides = shlex.join(args.overrides or WORKLOAD)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    trees = {"this": REPO, "against": args.against.resolve()}
    runs = {name: [] for name in trees}
    for _ in range(args.repeats):
        for name, tree in trees.items():
            runs[name].append(message(tree, overrides, env))
    medians = {name: {k: round(statistics.median(r[k] for r in rs), 2) for k in rs[0]} for name, rs in runs.items()}
    print(json.dumps({"cpu": cpu_model(), "cores": os.cpu_count(), "repeats": args.repeats, "overrides": overrides,
                      "against": str(trees["against"]), **medians,
                      "wall_ratio": round(medians["against"]["wall_s"] / medians["this"]["wall_s"], 2)}, indent=1))


if __name__ == "__main__":
    main()
