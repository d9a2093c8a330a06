"""``python -m pfedla.benchmark``: the yaml's checks, a search whose trials all fail, and a whole tiny benchmark
(search -> final runs -> run on -> pages) on synthetic data, with its resume after the machine goes away mid-grid."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pfedla.benchmark.spec import BENCHMARK_DIR, load_spec
from pfedla.compute import cpu_model
from pfedla.errors import ConfigError
from tests.conftest import REPO


def _spec_file(tmp_path, name="bench", **changes) -> str:
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


def _benchmark(spec: str, *args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "pfedla.benchmark", spec, *args, "--threads", "1"], cwd=REPO,
                          env=env, capture_output=True, text=True, **kw)


def test_methods_with_different_budgets_are_refused_unless_the_yaml_says_why(tmp_path):
    with pytest.raises(ConfigError, match=r"methods.fedavg.trials=5 differs from search.trials=2: every method gets "
                                          r"the same budget; remove it, or say why in methods.fedavg.trials_why"):
        load_spec(_spec_file(tmp_path, **{"methods.fedavg.trials": 5}))
    spec = load_spec(_spec_file(tmp_path, **{"methods.fedavg.trials": 5,
                                             "methods.fedavg.trials_why": "a grid of 5 values"}))
    assert spec.methods["fedavg"].trials == 5
    with pytest.raises(ConfigError, match=r"splits.dirichlet0.5.overrides sets dataset.test_images; the benchmark "
                                          r"sets it \(unused for searches, held_out for final runs\)"):
        load_spec(_spec_file(tmp_path, splits={"dirichlet0.5": {"overrides": ["dataset.test_images=pooled"],
                                                                "seeds": [0, 1]}}))
    with pytest.raises(ConfigError, match=r"common sets seed; the benchmark sets it"):
        load_spec(_spec_file(tmp_path, common=["seed=3"]))
    with pytest.raises(ConfigError, match=r"reference=fedbn is not one of the methods"):
        load_spec(_spec_file(tmp_path, reference="fedbn"))
    methods = {"fedavg": {"algorithm": "fedavg", "space": "fedavg"}, "fedbn": {"algorithm": "fedbn", "space": "fedbn"}}
    with pytest.raises(ConfigError, match=r"search.reuse=tiny has no search of fedbn; remove those methods"):
        load_spec(_spec_file(tmp_path, methods=methods, reference="fedavg", proxy_check={"top": 0},
                             search={"trials": 2, "sampler": "tpe", "seed": 0, "reuse": "tiny"}))


@pytest.mark.slow
def test_a_search_whose_trials_all_fail_stops_with_one_line_naming_the_first_error(tmp_path):
    spec = _spec_file(tmp_path, methods={"fedavg": {"algorithm": "fedavg", "space": "fedavg",
                                                    "overrides": ["partition.min_samples=100000"]}},
                      reference="fedavg", proxy_check={"top": 0})
    done = _benchmark(spec, "search", timeout=600)
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
    spec = _spec_file(tmp_path, "straight")
    done = _benchmark(spec, "--jobs", "2", timeout=1200)
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
    done = _benchmark(_spec_file(tmp_path, "moved"), "extend", "--jobs", "2", timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "first 3 rounds run again" in done.stdout and "differ from the table's run" not in done.stdout
    for cell in extended:
        a = (root / "store/extended/dirichlet0.5" / cell / "metrics.csv").read_text()
        assert (moved / "store/extended/dirichlet0.5" / cell / "metrics.csv").read_text() == a, cell

    # Another machine: the same searches (from the store), the grid killed mid-way, then run again.
    cut = tmp_path / "cut"
    shutil.copytree(root / "store" / "search", cut / "store" / "search")
    spec_cut = _spec_file(tmp_path, "cut")
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
    done = _benchmark(spec_cut, "run", "--jobs", "2", timeout=1200)
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


def _finished_run(path: Path, rounds: int, round_median: float, adapt_total: float = 0.0,
                  cpu_total: float | None = None, rejected: int = 0, best: float = 0.5, cpu: str | None = None) -> None:
    """A finished run of 4 clients, all in every round, with ``rejected`` of its updates rejected."""
    path.mkdir(parents=True)
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


def test_run_hours_are_split_by_the_cpu_that_ran_each_round():
    """A cell resumed on another machine counts under each CPU by its rounds there; cells from before rounds named
    their CPU count apart; a cell that timed no round counts nowhere. Against hand-computed hours."""
    from pfedla.benchmark.render import hours_by_cpu

    def run(rounds, median, cpus=None):
        timing = {"rounds_timed": rounds, "round_s_median": median, **({"cpu_models": cpus} if cpus else {})}
        return {"rounds": rounds, "timing": timing}

    runs = [run(100, 36.0, {"Xeon": 100}),  # 1 h, all on the Xeon
            run(100, 72.0, {"Xeon": 25, "EPYC": 75}),  # 2 h: a quarter of its rounds on the Xeon
            run(50, 72.0),  # 1 h, its CPU not recorded
            run(100, 72.0, {"EPYC": 50}),  # 2 h, resumed on the EPYC from a checkpoint older than the CPU's record
            {"rounds": 100, "timing": {}}]  # timed no round
    hours = hours_by_cpu(runs)
    assert list(hours) == ["", "EPYC", "Xeon"]
    assert hours == pytest.approx({"": 2.0, "EPYC": 2.5, "Xeon": 1.5})


def test_the_tuning_page_sums_each_search_s_trial_hours(tmp_path):
    """Trial hours by method and in all, from the trials' seconds (a trial cut before it finished has none)."""
    from pfedla.benchmark.paths import Places
    from pfedla.benchmark.tuning_page import tuning_page

    spec = load_spec(_spec_file(tmp_path))
    places = Places.of(spec)
    for method, seconds in (("pfedla", (3600.0, None, 1800.0)), ("fedavg", (720.0, 720.0, 720.0))):
        trials = [{"number": k, "params": {"client.lr": 0.1 * (k + 1)}, "value": None if s is None else 0.5,
                   "state": "FAIL" if s is None else "COMPLETE", "interrupted": s is None, "seconds": s}
                  for k, s in enumerate(seconds)]
        chosen = {"number": 0, "params": trials[0]["params"], "value": 0.5, "at_edge": []}
        places.search_record(method).parent.mkdir(parents=True, exist_ok=True)
        places.search_record(method).write_text(json.dumps({"budget": 3, "space": method, "trials": trials,
                                                            "chosen": chosen}))
    page = tuning_page(spec, places).splitlines()
    row = {line.split(" | ")[0][2:]: line for line in page if line.startswith(("| pfedla | 3", "| fedavg | 3"))}
    assert row["pfedla"].endswith("| 1.50 |") and row["fedavg"].endswith("| 0.60 |")
    assert "Trial hours: each trial's wall seconds, summed (2.1 h over these searches;" in "\n".join(page)


def test_status_counts_the_cells_and_estimates_what_is_left_from_the_finished_ones(tmp_path):
    """tiny: 1 split x 2 seeds x {pfedla, fedavg}, 3 rounds. Done: pfedla_s0 (2 s a median round, 0.3 s of
    adaptation over 3 rounds: 2.1 s a round) and fedavg_s0 (1 s); partial: pfedla_s1 (a checkpoint, 2 rounds in
    its metrics.csv); new: fedavg_s1. Left: 1 round x 2.1 s + 3 rounds x 1 s, by hand."""
    from pfedla.benchmark import status
    from pfedla.benchmark.paths import Cell, Places

    spec = load_spec(_spec_file(tmp_path))
    places = Places.of(spec)
    _finished_run(places.stored(Cell("dirichlet0.5", "pfedla", 0)), 3, 2.0, adapt_total=0.3)
    _finished_run(places.stored(Cell("dirichlet0.5", "fedavg", 0)), 3, 1.0)
    partial = places.cell(Cell("dirichlet0.5", "pfedla", 1))
    (partial / "checkpoints").mkdir(parents=True)
    (partial / "checkpoints/last.ckpt").write_bytes(b"")
    (partial / "metrics.csv").write_text("round,val/acc_mean\n1,0.4\n2,0.5\n")
    row = status.split_status(spec, places, "dirichlet0.5", ["pfedla", "fedavg"])
    assert (row.done, row.partial, row.new, row.rounds_left, row.unmeasured) == (2, {"pfedla_s1": 2}, 1, 4, 0)
    assert row.cell_seconds_left == pytest.approx(1 * 2.1 + 3 * 1.0)

    # a method with no finished cell is estimated by the split's median; a split with none is unmeasured
    shutil.rmtree(places.stored(Cell("dirichlet0.5", "fedavg", 0)))
    row = status.split_status(spec, places, "dirichlet0.5", ["pfedla", "fedavg"])
    assert row.unmeasured == 2 and row.cell_seconds_left == pytest.approx(1 * 2.1 + 2 * 3 * 2.1)
    shutil.rmtree(places.stored(Cell("dirichlet0.5", "pfedla", 0)))
    assert math.isnan(status.split_status(spec, places, "dirichlet0.5", ["pfedla", "fedavg"]).cell_seconds_left)

    _finished_run(places.stored(Cell("dirichlet0.5", "fedavg", 0)), 3, 1.0)
    shown = _benchmark(str(tmp_path / "bench.yaml"), "status", "--jobs", "2")
    assert shown.returncode == 0, shown.stderr
    assert "| dirichlet0.5 | 2 | 1/4 | - | pfedla_s1 2 | 2 | 7 | 0.0 (2 cells by the split's median) |" in shown.stdout
    assert f"left: {(1 + 3 + 3) * 1.0 / 3600:.1f} cell hours" in shown.stdout, shown.stdout
    assert "its CPU seconds where it recorded them (0 of 1 finished cells)" in shown.stdout
    assert f"the finished cells ran on: not recorded (1); this machine: {cpu_model()}" in shown.stdout

    # a cell that recorded its CPU seconds is measured by them (1.8 s over 3 rounds: 0.6 s), not its wall seconds
    shutil.rmtree(places.stored(Cell("dirichlet0.5", "fedavg", 0)))
    _finished_run(places.stored(Cell("dirichlet0.5", "fedavg", 0)), 3, 1.0, cpu_total=1.8, cpu="Test CPU")
    row = status.split_status(spec, places, "dirichlet0.5", ["pfedla", "fedavg"])
    assert row.by_cpu == 1 and row.cell_seconds_left == pytest.approx((1 + 3 + 3) * 0.6)
    assert row.diverged == [] and row.cpus == {"Test CPU": 1}
    shown = _benchmark(str(tmp_path / "bench.yaml"), "status", "--jobs", "2")
    assert "the finished cells ran on: Test CPU (1); this machine:" in shown.stdout, shown.stdout
    from pfedla.benchmark.render import cells_markdown  # the page's run time, by CPU where more than one ran cells

    assert "By CPU:" not in "\n".join(cells_markdown(spec, places))
    _finished_run(places.stored(Cell("dirichlet0.5", "pfedla", 0)), 3, 2400.0)
    assert ("(2.0 h of run time in all" in "\n".join(cells_markdown(spec, places)) and
            "By CPU: 2.0 h on a CPU not recorded; 0.0 h on Test CPU." in "\n".join(cells_markdown(spec, places)))
    shutil.rmtree(places.stored(Cell("dirichlet0.5", "pfedla", 0)))

    # 3 rounds x 4 clients: 7 of 12 updates rejected is more than half (diverged), 6 is not
    for rejected, names in ((6, []), (7, ["fedavg_s0"])):
        shutil.rmtree(places.stored(Cell("dirichlet0.5", "fedavg", 0)))
        _finished_run(places.stored(Cell("dirichlet0.5", "fedavg", 0)), 3, 1.0, rejected=rejected)
        assert status.split_status(spec, places, "dirichlet0.5", ["pfedla", "fedavg"]).diverged == names
    shown = _benchmark(str(tmp_path / "bench.yaml"), "status", "--jobs", "2")
    assert "| dirichlet0.5 | 2 | 1/4 | fedavg_s0 | pfedla_s1 2 |" in shown.stdout, shown.stdout


def test_status_measures_a_method_by_its_cells_on_this_machine_s_cpu_where_it_has_them(tmp_path):
    """tiny: 1 split x 2 seeds x {pfedla, fedavg}, 3 rounds, CPU seconds by hand. A method measured on this CPU and
    on another is measured by this CPU's cells alone, and so is a split for a method with no finished cell; a method
    measured elsewhere only keeps those cells. A cell resumed across CPUs is not this CPU's."""
    from pfedla.benchmark import status
    from pfedla.benchmark.paths import Cell, Places

    spec = load_spec(_spec_file(tmp_path))
    places = Places.of(spec)
    here, split = cpu_model(), "dirichlet0.5"

    def done(method, seed, cpu_total, cpu):
        path = places.stored(Cell(split, method, seed))
        shutil.rmtree(path, ignore_errors=True)
        _finished_run(path, 3, 99.0, cpu_total=cpu_total, cpu=cpu)
        return path

    # pfedla: 3 s a round elsewhere, 1 s here; fedavg: no finished cell, so the split's cells of this CPU: 1 s
    done("pfedla", 0, 9.0, "Another CPU")
    done("pfedla", 1, 3.0, here)
    row = status.split_status(spec, places, split, ["pfedla", "fedavg"])
    assert row.cell_seconds_left == pytest.approx(2 * 3 * 1.0) and row.here == 1  # not 2 x 3 x 2.0 (all cells)

    # fedavg measured elsewhere only (2 s a round): its own cells, not this CPU's pfedla
    shutil.rmtree(places.stored(Cell(split, "pfedla", 0)))
    done("fedavg", 0, 6.0, "Another CPU")
    row = status.split_status(spec, places, split, ["pfedla", "fedavg"])
    assert row.cell_seconds_left == pytest.approx(3 * 1.0 + 3 * 2.0) and row.here == 1

    # pfedla_s1 resumed here from a checkpoint of another CPU: not this CPU's, so the split has none of its own
    summary = done("pfedla", 1, 3.0, here) / "summary.json"
    record = json.loads(summary.read_text())
    record["timing"]["cpu_models"] = {"Another CPU": 1, here: 2}
    summary.write_text(json.dumps(record))
    row = status.split_status(spec, places, split, ["pfedla", "fedavg"])
    assert row.here == 0 and row.cell_seconds_left == pytest.approx(3 * 1.0 + 3 * 2.0)
    shown = _benchmark(str(tmp_path / "bench.yaml"), "status", "--jobs", "2")
    assert "0 ran wholly on this machine's CPU, and where a method (else its split) has such cells" in shown.stdout


def test_a_method_whose_first_cell_diverged_runs_at_the_next_best_trial_that_does_not(tmp_path, monkeypatch):
    """tiny (3 rounds, 4 clients: 12 updates a run), fedavg's search by hand: trial 0 chosen (proxy 0.9), trial 1 the
    same values again, trial 3 (0.85), trial 2 (0.8), trial 4 failed. The first cell (dirichlet0.5, seed 0) diverges
    (7 of 12 updates rejected); so does trial 3 at full scale; trial 2 does not: fedavg's cells run at its values."""
    from pfedla.benchmark import grid, render, tuning_page
    from pfedla.benchmark.paths import Cell, Places

    spec = load_spec(_spec_file(tmp_path))
    places = Places.of(spec)
    trial = lambda n, lr, value: {"number": n, "params": {"client.lr": lr}, "value": value}
    trials = [trial(0, 0.1, 0.9), trial(1, 0.1, 0.9), trial(2, 0.05, 0.8), trial(3, 0.02, 0.85), trial(4, 0.3, None)]
    places.search_record("fedavg").parent.mkdir(parents=True)
    places.search_record("fedavg").write_text(json.dumps({"chosen": trials[0], "trials": trials}))
    first, later = Cell("dirichlet0.5", "fedavg", 0), Cell("dirichlet0.5", "fedavg", 1)
    probe = lambda n: Cell("dirichlet0.5", "fedavg", 0, "proxy_check", n)
    lr = lambda cell: [v for v in grid.values_for(spec, places, cell) if v.startswith("client.lr=")]

    assert grid.fallback(spec, places, "fedavg") is None and lr(later) == ["client.lr=0.1"]  # not run yet
    for where in (places.stored, places.cell):
        _finished_run(where(first), 3, 1.0, rejected=6, best=0.7)
    assert grid.fallback(spec, places, "fedavg") is None  # 6 of 12 rejected: not diverged
    for where in (places.stored, places.cell):
        shutil.rmtree(where(first))
        _finished_run(where(first), 3, 1.0, rejected=7, best=0.3)
    assert grid.fallback(spec, places, "fedavg") == grid.Fallback(3, pending=True)
    assert lr(later) == ["client.lr=0.1"]  # the fallback is not known yet
    assert ("trial 0 (proxy 90.00: diverged, 7 updates rejected); trial 3 is still to run at full scale"
            in "\n".join(render.diverged_markdown(spec, places)))

    ran = []

    def run_probe(spec_, places_, cell, threads):  # trial 3 diverges at full scale, trial 2 does not
        ran.append(cell)
        if cell.trial is not None:
            assert lr(cell) == [f"client.lr={0.02 if cell.trial == 3 else 0.05}"]
            for where in (places.cell, places.stored):
                _finished_run(where(cell), 3, 1.0, rejected=12 if cell.trial == 3 else 0, best=0.6 + cell.trial / 100)
        else:
            assert lr(cell) == ["client.lr=0.05"]  # the later cell runs at trial 2's values
        return str(cell)

    run_cell = grid.run_cell
    monkeypatch.setattr(grid, "run_cell", run_probe)
    grid.run_cells(spec, places, [later], jobs=1, threads=1)  # the grid's step: the fallback first, then the cell
    assert ran == [probe(3), probe(2), later] and grid.fallback(spec, places, "fedavg") == grid.Fallback(2)
    ran.remove(later)
    assert lr(later) == lr(first) == ["client.lr=0.05"] and lr(probe(3)) == ["client.lr=0.02"]
    moved = Cell("dirichlet0.5", "fedavg", 0, "diverged")
    for where in (places.stored, places.cell):  # the diverged run is kept apart; trial 2's run is the first cell
        assert len(json.loads((where(moved) / "summary.json").read_text())["rejected_updates"]) == 7
        assert (where(first) / "summary.json").read_bytes() == (where(probe(2)) / "summary.json").read_bytes()
    grid.settle_fallback(spec, places, "fedavg", threads=1)  # settled: nothing runs or moves again
    assert ran == [probe(3), probe(2)] and grid.fallback(spec, places, "fedavg") == grid.Fallback(2)
    monkeypatch.setattr(grid.subprocess, "call", lambda *a, **k: pytest.fail("the first cell ran again"))
    assert run_cell(spec, places, first, 1) == str(first)  # the grid's step skips it: trial 2's run stands in

    page = "\n".join(render.diverged_markdown(spec, places))
    assert ("trial 0 (proxy 90.00: diverged, 7 updates rejected), trial 3 (proxy 85.00: diverged, 12 updates "
            "rejected), trial 2 (proxy 80.00: best validation 62.00); its final cells run at trial 2's values") in page
    checked = "\n".join(tuning_page.proxy_check_markdown(spec, places))
    assert "| 0 (chosen) | 90.00 | 30.00 | 30.00 |" in checked  # the chosen values' own (diverged) run

    # had trial 2 diverged too, no trial would be left: the cells keep the chosen values
    shutil.rmtree(places.stored(probe(2)))
    _finished_run(places.stored(probe(2)), 3, 1.0, rejected=12)
    assert grid.fallback(spec, places, "fedavg") == grid.Fallback(None) and lr(later) == ["client.lr=0.1"]
