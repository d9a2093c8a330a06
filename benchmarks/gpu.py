"""The GPU check: loop vs vmap engines at 20, 100 and 1000 clients, written as one JSON file.

    python benchmarks/gpu.py --out results/gpu.json     # on a machine with a GPU (benchmarks/gpu.sh, make bench-gpu)
    python benchmarks/gpu.py --smoke --out /tmp/g.json  # CPU, synthetic data, seconds: CI checks the JSON

Each row is one ``benchmarks/throughput.py`` case (its own process: samples/s, per-phase times, peak
CUDA memory, FLOP rate), pFedLA with the plain CNN; ``vmap_over_loop`` is loop round time / vmap round
time per case (the target: >= 5 at 100 clients per round). With ``--precision`` the headline workload
(full FMNIST, 20 clients, Dirichlet 0.3, BatchNorm CNN) also runs ``--precision-rounds`` rounds in
fp32 and with bf16 autocast, and the JSON says whether bf16 kept test/acc_mean within 0.5 points.
A time budget (``--budget-s``, default 420 s: the check must fit 8 minutes) skips what would not fit
and says so in the JSON, so a partial check still comes back.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from pfedla.compute import cpu_model

REPO = Path(__file__).resolve().parent.parent
CASES = ("dirichlet20", "clients100", "clients1000")
ENGINES = ("loop", "vmap")
HEADLINE = ["+experiment=noniid_dirichlet", "model=cnn_bn", "partition.alpha=0.3", "logger=none",
            "trainer.progress_bar=false", "federation.adapt_every=0", "checkpoint.every=1000000", "viz.every=1000000"]


def machine() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu": cpu_model(),
            "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def throughput_row(case: str, engine: str, args: argparse.Namespace, timeout: float) -> dict:
    cmd = [sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--one", case, "pfedla", engine, "cnn",
           "default", "--rounds", str(args.rounds), "--accelerator", args.accelerator]
    if args.smoke:
        cmd.append("--smoke")
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"case": case, "engine": engine, "error": f"timed out after {timeout:.0f} s"}
    line = next((x for x in out.stdout.splitlines() if x.startswith("{")), None)
    if line is None:
        return {"case": case, "engine": engine, "error": out.stderr.strip().splitlines()[-3:]}
    return json.loads(line)


def precision_run(precision: str, args: argparse.Namespace, timeout: float) -> dict:
    overrides = [*HEADLINE, f"federation.rounds={args.precision_rounds}", f"trainer.accelerator={args.accelerator}",
                 f"trainer.precision={precision}"]
    if args.smoke:
        overrides += ["dataset=synthetic", "federation.num_clients=6", "partition.min_samples=4"]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            proc = subprocess.run([sys.executable, "-m", "pfedla.run", *overrides, f"hydra.run.dir={tmp}"], cwd=REPO,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"precision": precision, "error": f"timed out after {timeout:.0f} s"}
        if proc.returncode != 0:
            return {"precision": precision, "error": proc.stderr.strip().splitlines()[-3:]}
        summary = json.loads((Path(tmp) / "summary.json").read_text())
    return {"precision": precision, "rounds": summary["rounds"], "test_acc_mean": summary["final"]["test/acc_mean"],
            "round_s_median": summary["timing"]["round_s_median"], "wall_s": round(summary["wall_seconds"], 2),
            "peak_cuda_memory_mib": summary["compute"].get("peak_cuda_memory_mib")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "gpu.json")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny synthetic cases (CI)")
    parser.add_argument("--accelerator", default=None, help="default: gpu, or cpu with --smoke")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds per case, after one warm-up round")
    parser.add_argument("--precision", action="store_true", help="also compare fp32 with bf16 autocast")
    parser.add_argument("--precision-rounds", type=int, default=10)
    parser.add_argument("--budget-s", type=float, default=420.0)
    args = parser.parse_args()
    args.accelerator = args.accelerator or ("cpu" if args.smoke else "gpu")
    started = time.perf_counter()
    left = lambda: args.budget_s - (time.perf_counter() - started)  # noqa: E731
    report: dict = {"machine": machine(), "smoke": args.smoke, "accelerator": args.accelerator, "rows": [],
                    "skipped": [], "vmap_over_loop": {}}
    for case in args.cases:
        for engine in ENGINES:
            if left() < 20:
                report["skipped"].append(f"{case}/{engine}: time budget")
                continue
            row = throughput_row(case, engine, args, timeout=left())
            report["rows"].append(row)
            print(json.dumps(row), flush=True)
        loop, vmap = (next((r for r in report["rows"] if r.get("case", "").startswith(case) and r.get("engine") == e
                            and "round_s" in r), None) for e in ENGINES)
        if loop and vmap:
            report["vmap_over_loop"][case] = round(loop["round_s"] / vmap["round_s"], 3)
    if args.precision:
        runs = []
        for precision in ("32", "bf16"):
            if left() < 20:
                report["skipped"].append(f"precision {precision}: time budget")
                continue
            runs.append(precision_run(precision, args, timeout=left()))
        report["precision"] = runs
        if len(runs) == 2 and all("test_acc_mean" in r for r in runs):
            gap = 100 * (runs[1]["test_acc_mean"] - runs[0]["test_acc_mean"])
            report["bf16_minus_fp32_points"] = round(gap, 3)
            report["bf16_within_half_a_point"] = abs(gap) <= 0.5
    report["wall_s"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
