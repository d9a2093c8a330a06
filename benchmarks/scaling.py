"""One run on K processes against the same run on one: time per round and its phases, speed-up, and the
traffic between ranks. Prints one JSON object per (algorithm, K).

    python benchmarks/scaling.py --repeats 3              # noniid_dirichlet (real FMNIST), K = 1, 2, CPU
    python benchmarks/scaling.py --smoke                  # tiny synthetic run, seconds (CI runs this)
    python benchmarks/scaling.py --processes 1 2 4 --accelerator gpu
    python benchmarks/scaling.py --processes auto --old-default --repeats 3   # today's default vs the old one

Each K is a real ``python -m pfedla.run ... trainer.devices=K`` (gloo on CPU, NCCL on GPU); the numbers
come from that run's summary.json (``timing``: per-phase medians over the rounds after the first, on
rank zero). Speed-ups are against the first row: with ``--old-default``, one process at the defaults
before the CPU fast path (2 threads, NCHW layout, 4096 samples per evaluation forward pass); ``auto``
is today's default process count (``processes`` in the row says what it chose). ``model_amdahl_speedup``
is what that first run's phase split predicts if client training and evaluation divided perfectly by K
and the replicated server work did not (and gathering cost nothing): the ideal for that K.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from pfedla.benchmark.fields import SCALING_FIELDS

REPO = Path(__file__).resolve().parent.parent
FIELDS = SCALING_FIELDS


OLD_DEFAULT = ["trainer.devices=1", "trainer.memory_format=contiguous", "trainer.eval_batch_size=4096"]


def run_once(args: argparse.Namespace, algorithm: str, setting: str) -> dict:
    """``setting``: a process count K, ``auto``, or ``old-default``."""
    overrides = ["+experiment=noniid_dirichlet", f"algorithm={algorithm}", f"federation.rounds={args.rounds + 1}",
                 "logger=none", "trainer.progress_bar=false", f"trainer.accelerator={args.accelerator}",
                 "checkpoint.every=1000000", "viz.every=1000000", "federation.adapt_every=0", f"model={args.model}"]
    overrides += OLD_DEFAULT if setting == "old-default" else [f"trainer.devices={setting}"]
    if args.smoke:
        overrides += ["dataset=synthetic", "federation.num_clients=6", "partition.min_samples=4"]
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, "-m", "pfedla.run", *overrides, f"hydra.run.dir={tmp}"], cwd=REPO,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            return {"algorithm": algorithm, "setting": setting, "error": proc.stderr.strip().splitlines()[-3:]}
        summary = json.loads((Path(tmp) / "summary.json").read_text())
    cfg, timing = summary["config"], summary["timing"]
    k = summary["processes"]
    m = round(cfg["federation"]["participation"] * cfg["federation"]["num_clients"])
    model_bytes = summary["bytes_up"] // (summary["rounds"] * m)  # what one client uploads per round
    return {
        "workload": "noniid_dirichlet" + ("-smoke" if args.smoke else ""), "algorithm": algorithm,
        "model": args.model, "setting": setting, "processes": k, "device": args.accelerator, "clients_per_round": m,
        "threads": summary["compute"]["threads"], "memory_format": summary["compute"]["memory_format"],
        "round_s": round(timing["round_s_median"], 4),
        **{f"{p}_s": round(timing[f"{p}_s_median"], 4) for p in ("client", "gather", "server", "eval")},
        "wall_s": round(summary["wall_seconds"], 2), "client_model_bytes": model_bytes,
        # all_gather: each rank receives the trained models of the clients the other ranks trained
        "gathered_bytes_per_rank_per_round": round(model_bytes * m * (k - 1) / k),
        "final_acc_mean": summary["final"]["test/acc_mean"],
    }


def median_run(runs: list[dict]) -> dict:
    """The repeat with the median round time, plus every repeat's round time."""
    ok = sorted((r for r in runs if "error" not in r), key=lambda r: r["round_s"])
    if not ok:
        return runs[-1]
    return {**ok[(len(ok) - 1) // 2], "round_s_runs": [r["round_s"] for r in runs if "error" not in r]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", nargs="+", default=["1", "2"], help="process counts K, or auto")
    parser.add_argument("--old-default", action="store_true",
                        help="first, one process at the defaults before the CPU fast path (the speed-up baseline)")
    parser.add_argument("--algorithms", nargs="+", default=["pfedla", "fedavg"])
    parser.add_argument("--model", default="cnn", choices=["cnn", "cnn_bn"])
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds after one warm-up round")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs per K, interleaved across K (a shared machine drifts); the median one is shown")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny synthetic sizes (seconds)")
    args = parser.parse_args()
    settings = (["old-default"] if args.old_default else []) + args.processes
    for algorithm in args.algorithms:
        runs: dict[str, list[dict]] = {s: [] for s in settings}
        for _ in range(args.repeats):
            for setting in settings:
                runs[setting].append(run_once(args, algorithm, setting))
        base = None
        for setting in settings:
            row = median_run(runs[setting])
            if "error" not in row:
                base = base or row
                row["speedup"] = round(base["round_s"] / row["round_s"], 3)
                divisible, serial = base["client_s"] + base["eval_s"], base["server_s"]
                scale = base["processes"] / row["processes"]
                row["model_amdahl_speedup"] = round((divisible + serial) / (divisible * scale + serial), 3)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
