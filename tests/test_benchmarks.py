"""The benchmarks run in smoke mode and print every promised field (numbers are not asserted here)."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_throughput_benchmark_smoke_prints_every_field():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from throughput import FIELDS

    proc = subprocess.run(
        [sys.executable, "benchmarks/throughput.py", "--smoke", "--cases", "dirichlet20", "--algorithms", "pfedla",
         "--engines", "loop", "vmap", "--rounds", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r.get("engine") for r in rows] == ["loop", "vmap"]
    for row in rows:
        assert set(FIELDS) <= set(row), set(FIELDS) - set(row)
        assert row["round_s"] == pytest.approx(row["client_s"] + row["server_s"], abs=2e-4)
        assert row["client_gflops"] > 0 and row["matmul_peak_gflops"] > 0 and row["reference_s"] > 0


def test_scaling_benchmark_smoke_runs_one_and_two_processes():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from scaling import FIELDS

    proc = subprocess.run(
        [sys.executable, "benchmarks/scaling.py", "--smoke", "--algorithms", "fedavg", "--rounds", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r.get("processes") for r in rows] == [1, 2]
    for row in rows:
        assert set(FIELDS) <= set(row), set(FIELDS) - set(row)
    one, two = rows
    assert one["gather_s"] == 0 and one["gathered_bytes_per_rank_per_round"] == 0 and one["speedup"] == 1
    assert one["model_amdahl_speedup"] == 1 and 1 < two["model_amdahl_speedup"] <= 2
    assert two["gathered_bytes_per_rank_per_round"] == two["client_model_bytes"] * 6 // 2  # 6 clients, half remote
    assert two["final_acc_mean"] == one["final_acc_mean"]  # same run, split over two processes
