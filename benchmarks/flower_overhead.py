"""What a real deployment costs per round over the in-process run: the same overrides run by python -m pfedla.run
and by python -m pfedla.flower local (a SuperLink and N SuperNodes on loopback), side by side; prints JSON.

    .venv-flower/bin/python benchmarks/flower_overhead.py --rounds 3 --nodes 2

Default workload: the headline (+experiment=noniid_dirichlet: Fashion-MNIST, 20 clients, all each round), with
evaluation every round. The medians skip round 1 (start-up). A deployment's round pays, per node and message,
a fresh ClientApp process (torch imported, the partition built) plus the tensors' round trip.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pfedla.compute import cpu_model

REPO = Path(__file__).resolve().parent.parent
WORKLOAD = ["+experiment=noniid_dirichlet", "logger=none", "trainer.progress_bar=false", "federation.adapt_every=0",
            "viz.every=1000000"]


def timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command[:4])} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every process (OMP_NUM_THREADS)")
    parser.add_argument("overrides", nargs="*", help="replace the workload's overrides")
    args = parser.parse_args()
    overrides = (args.overrides or WORKLOAD) + [f"federation.rounds={args.rounds}", "trainer.devices=1"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "WANDB_MODE": "disabled"}
    with tempfile.TemporaryDirectory() as scratch:
        runs = {"in_process": Path(scratch) / "in_process", "deployed": Path(scratch) / "deployed"}
        wall = {"in_process": timed([sys.executable, "-m", "pfedla.run", *overrides,
                                     f"hydra.run.dir={runs['in_process']}"], env),
                "deployed": timed([sys.executable, "-m", "pfedla.flower", "local", "--nodes", str(args.nodes),
                                   "--run-dir", str(runs["deployed"]), "--", *overrides], env)}
        timing = {k: json.loads((d / "summary.json").read_text())["timing"] for k, d in runs.items()}
        same = (runs["in_process"] / "metrics.csv").read_text() == (runs["deployed"] / "metrics.csv").read_text()
    row = {k: {"wall_s": round(wall[k], 1), "round_s_median": round(timing[k]["round_s_median"], 2),
               "client_s_median": round(timing[k]["client_s_median"], 2),
               "eval_s_median": round(timing[k]["eval_s_median"], 2)} for k in runs}
    print(json.dumps({"cpu": cpu_model(), "cores": os.cpu_count(), "threads": args.threads, "nodes": args.nodes,
                      "rounds": args.rounds, "overrides": overrides, **row,
                      "overhead_s_per_round": round(row["deployed"]["round_s_median"]
                                                    - row["in_process"]["round_s_median"], 2),
                      "ratio": round(row["deployed"]["round_s_median"] / row["in_process"]["round_s_median"], 2),
                      "metrics_equal": same}, indent=1))


if __name__ == "__main__":
    main()
