"""The benchmarks run in smoke mode and print every promised field (numbers are not asserted here)."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_throughput_benchmark_smoke_prints_every_field():
    from pfedla.benchmark.fields import THROUGHPUT_FIELDS as FIELDS

    proc = subprocess.run(
        [sys.executable, "benchmarks/throughput.py", "--smoke", "--cases", "dirichlet20", "--algorithms", "pfedla",
         "--engines", "loop", "vmap", "--models", "cnn", "--rounds", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    # Every combination at today's defaults and, next to it, at the defaults before the CPU fast path.
    assert [(r.get("engine"), r.get("settings"), r.get("memory_format")) for r in rows] == [
        ("loop", "default", "channels_last"), ("loop", "old-default", "contiguous"),
        ("vmap", "default", "contiguous"), ("vmap", "old-default", "contiguous")]
    for row in rows:
        assert set(FIELDS) <= set(row), set(FIELDS) - set(row)
        assert row["round_s"] == pytest.approx(row["client_s"] + row["server_s"] + row["eval_s"], abs=3e-4)
        assert row["client_gflops"] > 0 and row["matmul_peak_gflops"] > 0 and row["reference_s"] > 0
        assert row["peak_cuda_mib"] is None  # a CPU run


def test_scaling_benchmark_smoke_runs_one_and_two_processes():
    from pfedla.benchmark.fields import SCALING_FIELDS as FIELDS

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


def test_gpu_check_smoke_runs_on_the_cpu_and_writes_well_formed_json(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        ["bash", "benchmarks/gpu.sh", "--smoke", "--cases", "clients100", "--rounds", "1", "--precision",
         "--precision-rounds", "1", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "OUT": ""},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["smoke"] is True and report["accelerator"] == "cpu" and report["skipped"] == []
    assert [(r["case"], r["engine"]) for r in report["rows"]] == [("clients100-smoke", "loop"),
                                                                  ("clients100-smoke", "vmap")]
    assert all(r["samples_per_s"] > 0 and "client_s" in r and "eval_s" in r for r in report["rows"])
    loop, vmap = report["rows"]
    assert report["vmap_over_loop"]["clients100"] == pytest.approx(loop["round_s"] / vmap["round_s"], rel=1e-2)
    fp32, bf16 = report["precision"]
    assert (fp32["precision"], bf16["precision"]) == ("32", "bf16") and fp32["rounds"] == bf16["rounds"] == 1
    assert report["bf16_minus_fp32_points"] == pytest.approx(100 * (bf16["test_acc_mean"] - fp32["test_acc_mean"]),
                                                             abs=1e-3)
    assert report["bf16_within_half_a_point"] is (abs(100 * (bf16["test_acc_mean"] - fp32["test_acc_mean"])) <= 0.5)


def test_readapt_at_the_run_s_own_lr_gives_its_last_score_b_again(synthetic_cfg, tmp_path):
    """benchmarks/readapt.py on a finished run: at the run's own client.lr it scores (b) as the run's last round did
    (the same batch order; the contiguous layout may flip a prediction); at lr 0, (b) is (a)."""
    from pfedla.run import run, setup

    cfg = synthetic_cfg("algorithm=fedper", "federation.rounds=2", "federation.adapt_every=1", "checkpoint.every=1",
                        "trainer.memory_format=contiguous")
    summary = run(cfg, tmp_path / "run", module=setup(cfg))
    proc = subprocess.run([sys.executable, "benchmarks/readapt.py", str(tmp_path / "run"), "--lrs",
                           str(cfg.client.lr), "0"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    own, still = [json.loads(line) for line in proc.stdout.splitlines()]
    assert own["round"] == 2 and own["a_test_mean"] == pytest.approx(100 * summary["final"]["test/acc_mean"], abs=0.01)
    assert own["b_test_mean"] == pytest.approx(100 * summary["final_adapted"]["test/adapted_acc_mean"], abs=0.01)
    assert still["b_test_mean"] == pytest.approx(still["a_test_mean"], abs=0.01)
    assert own["b_val_mean"] == pytest.approx(100 * summary["final_adapted"]["val/adapted_acc_mean"], abs=0.01)
