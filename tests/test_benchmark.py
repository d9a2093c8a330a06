"""``python -m pfedla.benchmark``: the yaml's checks, a search whose trials all fail, and a whole tiny benchmark
(search -> final runs -> run on -> pages) on synthetic data, with its resume after the machine goes away mid-grid."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pfedla.benchmark.spec import load_spec
from pfedla.errors import ConfigError
from tests.benchmark_helpers import benchmark, spec_file
from tests.conftest import REPO


def test_methods_with_different_budgets_are_refused_unless_the_yaml_says_why(tmp_path):
    with pytest.raises(ConfigError, match=r"methods.fedavg.trials=5 differs from search.trials=2: every method gets "
                                          r"the same budget; remove it, or say why in methods.fedavg.trials_why"):
        load_spec(spec_file(tmp_path, **{"methods.fedavg.trials": 5}))
    spec = load_spec(spec_file(tmp_path, **{"methods.fedavg.trials": 5,
                                            "methods.fedavg.trials_why": "a grid of 5 values"}))
    assert spec.methods["fedavg"].trials == 5
    with pytest.raises(ConfigError, match=r"splits.dirichlet0.5.overrides sets dataset.test_images; the benchmark "
                                          r"sets it \(unused for searches, held_out for final runs\)"):
        load_spec(spec_file(tmp_path, splits={"dirichlet0.5": {"overrides": ["dataset.test_images=pooled"],
                                                               "seeds": [0, 1]}}))
    with pytest.raises(ConfigError, match=r"common sets seed; the benchmark sets it"):
        load_spec(spec_file(tmp_path, common=["seed=3"]))
    with pytest.raises(ConfigError, match=r"reference=fedbn is not one of the methods"):
        load_spec(spec_file(tmp_path, reference="fedbn"))
    methods = {"fedavg": {"algorithm": "fedavg", "space": "fedavg"}, "fedbn": {"algorithm": "fedbn", "space": "fedbn"}}
    with pytest.raises(ConfigError, match=r"search.reuse=tiny has no search of fedbn; remove those methods"):
        load_spec(spec_file(tmp_path, methods=methods, reference="fedavg", proxy_check={"top": 0},
                            search={"trials": 2, "sampler": "tpe", "seed": 0, "reuse": "tiny"}))


@pytest.mark.slow
def test_a_search_whose_trials_all_fail_stops_with_one_line_naming_the_first_error(tmp_path):
    spec = spec_file(tmp_path, methods={"fedavg": {"algorithm": "fedavg", "space": "fedavg",
                                                   "overrides": ["partition.min_samples=100000"]}},
                     reference="fedavg", proxy_check={"top": 0})
    done = benchmark(spec, "search", timeout=600)
    assert done.returncode == 2
    error = done.stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("pfedla.benchmark: error: search fedavg: all 2 trials failed; "
                                                   "the first: ConfigError: federation.num_clients=4 x "
                                                   "partition.min_samples=100000 needs 400000 samples")
    assert "No trials are completed yet" not in done.stderr


def _running_in_group(pgid: int, wait: float = 10.0) -> list[int]:
    """PIDs of the process group still running (zombies left to a container's init do not run), after up to
    ``wait`` seconds for SIGKILL to land."""
    deadline = time.time() + wait
    while True:
        running = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
                running.append(int(entry))
        if not running or time.time() > deadline:
            return running
        time.sleep(0.2)


def _cells(root):
    return sorted(p.parent.name for p in (root / "store" / "runs").rglob("summary.json"))


@pytest.mark.slow
def test_a_whole_tiny_benchmark_runs_end_to_end_and_resumes_exactly_after_a_kill_mid_grid(tmp_path):
    spec = spec_file(tmp_path, "straight")
    done = benchmark(spec, "--jobs", "2", timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    root = tmp_path / "straight"
    for method in ("pfedla", "fedavg"):
        record = json.loads((root / "store" / "search" / f"{method}.json").read_text())
        assert record["budget"] == 2 and len(record["trials"]) == 2 and record["sampler"] == "tpe"
        assert record["chosen"]["value"] == max(t["value"] for t in record["trials"] if t["value"] is not None)
    assert _cells(root) == ["fedavg_s0", "fedavg_s1", "pfedla_s0", "pfedla_s1"]
    summary = json.loads((root / "store/runs/dirichlet0.5/pfedla_s0/summary.json").read_text())
    assert summary["rounds"] == 3 and summary["config"]["dataset"]["test_images"] == "held_out"
    chosen = json.loads((root / "store/search/pfedla.json").read_text())["chosen"]["params"]
    assert summary["config"]["client"]["lr"] == chosen["client.lr"]  # the final run uses the searched value
    extended = sorted(p.parent.name for p in (root / "store" / "extended").rglob("summary.json"))
    assert extended and all(json.loads((root / "store/extended/dirichlet0.5" / c / "summary.json").read_text())
                            ["rounds"] == 5 for c in extended)
    page, tuning = (root / "RESULTS.md").read_text(), (root / "TUNING.md").read_text()
    assert "## dirichlet0.5" in page and "| pfedla | 0,1 | 3 |" in page and "Holm p" in page
    assert "What this family can show: Holm's first step needs p <= 0.05 / 2" in page  # fedavg, 2 scores
    assert "| dirichlet0.5 | (a) | fedavg | 2 |" in page and "Run on past 3 rounds" in page
    assert (root / "store" / "curves_dirichlet0.5.png").is_file() and "4 of 4 cells finished" in page
    from pfedla.timing import round_seconds  # the tables time a round; the total is the cells' rounds at that pace

    stored = [json.loads(p.read_text()) for p in (root / "store/runs").rglob("summary.json")]
    total = sum(round_seconds(x) * x["rounds"] for x in stored)
    assert "| s a round |" in page and f"({total / 3600:.1f} h of run time in all: each cell's seconds a round" in page
    assert "| pfedla | 2 | 0 |" in tuning and "## fedavg: 2 trials" in tuning
    trial_hours = sum(t["seconds"] for t in record["trials"]) / 3600  # fedavg's record, from the loop above
    assert f"| {trial_hours:.2f} |" in next(line for line in tuning.splitlines() if line.startswith("| fedavg | 2 |"))
    other = next(t["number"] for t in json.loads((root / "store/search/pfedla.json").read_text())["trials"]
                 if t["number"] != json.loads((root / "store/search/pfedla.json").read_text())["chosen"]["number"])
    checked = json.loads((root / f"store/proxy_check/dirichlet0.5/pfedla_t{other}/summary.json").read_text())
    assert checked["rounds"] == 3 and checked["config"]["seed"] == 0  # the other trial, run like a final run
    assert "## How well the proxy predicts full scale" in tuning and "**pfedla** (2 trials at full scale)" in tuning

    # A machine with the store but not the work folder (no checkpoint): each extended cell runs its table's run again
    # from round 1, then on; equal threads, the same ops: the same curves as extending from the checkpoint.
    moved = tmp_path / "moved"
    shutil.copytree(root / "store", moved / "store", ignore=shutil.ignore_patterns("extended"))
    done = benchmark(spec_file(tmp_path, "moved"), "extend", "--jobs", "2", timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "first 3 rounds run again" in done.stdout and "differ from the table's run" not in done.stdout
    for cell in extended:
        a = (root / "store/extended/dirichlet0.5" / cell / "metrics.csv").read_text()
        assert (moved / "store/extended/dirichlet0.5" / cell / "metrics.csv").read_text() == a, cell

    # Another machine: the same searches (from the store), the grid killed mid-way, then run again.
    cut = tmp_path / "cut"
    shutil.copytree(root / "store" / "search", cut / "store" / "search")
    spec_cut = spec_file(tmp_path, "cut")
    env = {**os.environ, "WANDB_MODE": "disabled"}
    grid = subprocess.Popen([sys.executable, "-m", "pfedla.benchmark", spec_cut, "run", "--jobs", "2", "--threads",
                             "1"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 600
        while not list((cut / "work" / "runs").rglob("last.ckpt")) and time.time() < deadline:
            time.sleep(0.2)
    finally:
        os.killpg(grid.pid, signal.SIGKILL)  # the machine goes away: no checkpoint on the way out
        grid.wait()
    assert list((cut / "work" / "runs").rglob("last.ckpt")) and len(_cells(cut)) < 4
    assert _running_in_group(grid.pid) == []  # nothing of the killed grid is left running
    done = benchmark(spec_cut, "run", "--jobs", "2", timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _cells(cut) == _cells(root)
    resumed = [p.parent for p in (cut / "work" / "runs").rglob("console.log") if "resume" in
               (p.parent / ".hydra" / "overrides.yaml").read_text()]
    assert resumed  # a cell cut mid-run went on from its checkpoint
    for cell in _cells(root):  # equal threads, the same ops: every curve bit for bit
        a = (root / "store/runs/dirichlet0.5" / cell / "metrics.csv").read_text()
        assert (cut / "store/runs/dirichlet0.5" / cell / "metrics.csv").read_text() == a, cell


@pytest.mark.parametrize("name", ["fmnist", "feature_skew"])
def test_every_cell_of_a_committed_benchmark_composes_a_valid_run_at_its_chosen_values(name):
    """Each (method, split) of the repository's benchmarks, with the values its committed search chose, passes the
    run's own checks (pfedla/validate.py): a method added to a yaml that cannot run there (feature skew's clients
    never seen in training need a recipe) fails here, not hours into the grid."""
    from pfedla.benchmark.grid import cell_command
    from pfedla.benchmark.paths import Cell, Places
    from pfedla.validate import validate_config
    from tests.conftest import compose_config

    spec = load_spec(name)
    places = Places.of(spec)
    for method in spec.methods:
        for split, about in spec.splits.items():
            args = cell_command(spec, places, Cell(split, method, about.seeds[0]))[3:]
            cfg = compose_config([a for a in args if not a.startswith(("hydra.", "resume="))])
            validate_config(cfg)
            assert cfg.algorithm.name == spec.methods[method].algorithm and cfg.seed == about.seeds[0]
