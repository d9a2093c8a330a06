"""Builders the benchmark tests share: a tiny benchmark's yaml under a test's folder, the command run on it, and a
finished run written by hand (what the grid, the status and the pages read of one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from pfedla.benchmark.spec import BENCHMARK_DIR
from tests.conftest import REPO


def spec_file(tmp_path, name="bench", **changes) -> str:
    """conf/benchmark/tiny.yaml with its folders under tmp_path and ``changes`` applied (dotted keys)."""
    spec = yaml.safe_load((BENCHMARK_DIR / "tiny.yaml").read_text())
    spec.update(work=str(tmp_path / name / "work"), store=str(tmp_path / name / "store"),
                page=str(tmp_path / name / "RESULTS.md"), tuning_page=str(tmp_path / name / "TUNING.md"))
    for key, value in changes.items():
        *parents, last = key.split(".")
        node = spec
        for part in parents:
            node = node[part]
        node[last] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def benchmark(spec: str, *args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "pfedla.benchmark", spec, *args, "--threads", "1"], cwd=REPO,
                          env=env, capture_output=True, text=True, **kw)


def finished_run(path: Path, rounds: int, round_median: float, adapt_total: float = 0.0,
                  cpu_total: float | None = None, rejected: int = 0, best: float = 0.5, cpu: str | None = None) -> None:
    """A finished run of 4 clients, all in every round, with ``rejected`` of its updates rejected."""
    path.mkdir(parents=True, exist_ok=True)
    timing = {"rounds_timed": rounds, "round_s_median": round_median, "adapt_s_median": 0.0,
              "adapt_s_total": adapt_total}
    if cpu_total is not None:
        timing.update(cpu_rounds_timed=rounds, cpu_s_total=cpu_total)
    if cpu is not None:  # the CPU every round ran on
        timing["cpu_models"] = {cpu: rounds}
    config = {"federation": {"num_clients": 4, "participation": 1.0}}
    rejected_updates = [[1 + k // 4, k % 4] for k in range(rejected)]
    (path / "summary.json").write_text(json.dumps({"rounds": rounds, "timing": timing, "config": config,
                                                   "rejected_updates": rejected_updates,
                                                   "best": {"val/acc_mean": best, "test/acc_mean": best}}))
    (path / "metrics.csv").write_text("round,val/acc_mean\n" + "".join(f"{r},0.5\n" for r in range(1, rounds + 1)))
