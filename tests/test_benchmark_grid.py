"""What the grid decides from the runs it finished: which cells run on past the protocol's rounds, and which trial's
values a method whose first cell diverged runs at; on runs written by hand."""

import json
import shutil
from pathlib import Path

import pytest

from pfedla.benchmark.spec import load_spec
from tests.benchmark_helpers import finished_run, spec_file


def test_a_method_whose_first_cell_diverged_runs_at_the_next_best_trial_that_does_not(tmp_path, monkeypatch):
    """tiny (3 rounds, 4 clients: 12 updates a run), fedavg's search by hand: trial 0 chosen (proxy 0.9), trial 1 the
    same values again, trial 3 (0.85), trial 2 (0.8), trial 4 failed. The first cell (dirichlet0.5, seed 0) diverges
    (7 of 12 updates rejected); so does trial 3 at full scale; trial 2 does not: fedavg's cells run at its values."""
    from pfedla.benchmark import fallback, grid, render, tuning_page
    from pfedla.benchmark.paths import Cell, Places

    spec = load_spec(spec_file(tmp_path))
    places = Places.of(spec)
    trial = lambda n, lr, value: {"number": n, "params": {"client.lr": lr}, "value": value}
    trials = [trial(0, 0.1, 0.9), trial(1, 0.1, 0.9), trial(2, 0.05, 0.8), trial(3, 0.02, 0.85), trial(4, 0.3, None)]
    places.search_record("fedavg").parent.mkdir(parents=True)
    places.search_record("fedavg").write_text(json.dumps({"chosen": trials[0], "trials": trials}))
    first, later = Cell("dirichlet0.5", "fedavg", 0), Cell("dirichlet0.5", "fedavg", 1)
    probe = lambda n: Cell("dirichlet0.5", "fedavg", 0, "proxy_check", n)
    lr = lambda cell: [v for v in fallback.values_for(spec, places, cell) if v.startswith("client.lr=")]

    assert fallback.fallback(spec, places, "fedavg") is None and lr(later) == ["client.lr=0.1"]  # not run yet
    for where in (places.stored, places.cell):
        finished_run(where(first), 3, 1.0, rejected=6, best=0.7)
    assert fallback.fallback(spec, places, "fedavg") is None  # 6 of 12 rejected: not diverged
    for where in (places.stored, places.cell):
        shutil.rmtree(where(first))
        finished_run(where(first), 3, 1.0, rejected=7, best=0.3)
    assert fallback.fallback(spec, places, "fedavg") == fallback.Fallback(3, pending=True)
    assert lr(later) == ["client.lr=0.1"]  # the fallback is not known yet
    assert ("trial 0 (proxy 90.00: diverged, 7 updates rejected); trial 3 is still to run at full scale"
            in "\n".join(render.diverged_markdown(spec, places)))

    ran = []

    def run_probe(spec_, places_, cell, threads):  # trial 3 diverges at full scale, trial 2 does not
        ran.append(cell)
        if cell.trial is not None:
            assert lr(cell) == [f"client.lr={0.02 if cell.trial == 3 else 0.05}"]
            for where in (places.cell, places.stored):
                finished_run(where(cell), 3, 1.0, rejected=12 if cell.trial == 3 else 0, best=0.6 + cell.trial / 100)
        else:
            assert lr(cell) == ["client.lr=0.05"]  # the later cell runs at trial 2's values
        return str(cell)

    run_cell = grid.run_cell
    monkeypatch.setattr(grid, "run_cell", run_probe)
    grid.run_cells(spec, places, [later], jobs=1, threads=1)  # the grid's step: the fallback first, then the cell
    assert ran == [probe(3), probe(2), later] and fallback.fallback(spec, places, "fedavg") == fallback.Fallback(2)
    ran.remove(later)
    assert lr(later) == lr(first) == ["client.lr=0.05"] and lr(probe(3)) == ["client.lr=0.02"]
    moved = Cell("dirichlet0.5", "fedavg", 0, "diverged")
    for where in (places.stored, places.cell):  # the diverged run is kept apart; trial 2's run is the first cell
        assert len(json.loads((where(moved) / "summary.json").read_text())["rejected_updates"]) == 7
        assert (where(first) / "summary.json").read_bytes() == (where(probe(2)) / "summary.json").read_bytes()
    grid.settle_fallback(spec, places, "fedavg", threads=1)  # settled: nothing runs or moves again
    assert ran == [probe(3), probe(2)] and fallback.fallback(spec, places, "fedavg") == fallback.Fallback(2)
    monkeypatch.setattr(grid.subprocess, "call", lambda *a, **k: pytest.fail("the first cell ran again"))
    assert run_cell(spec, places, first, 1) == str(first)  # the grid's step skips it: trial 2's run stands in

    page = "\n".join(render.diverged_markdown(spec, places))
    assert ("trial 0 (proxy 90.00: diverged, 7 updates rejected), trial 3 (proxy 85.00: diverged, 12 updates "
            "rejected), trial 2 (proxy 80.00: best validation 62.00); its final cells run at trial 2's values") in page
    checked = "\n".join(tuning_page.proxy_check_markdown(spec, places))
    assert "| 0 (chosen) | 90.00 | 30.00 | 30.00 |" in checked  # the chosen values' own (diverged) run

    # had trial 2 diverged too, no trial would be left: the cells keep the chosen values
    shutil.rmtree(places.stored(probe(2)))
    finished_run(places.stored(probe(2)), 3, 1.0, rejected=12)
    assert fallback.fallback(spec, places, "fedavg") == fallback.Fallback(None) and lr(later) == ["client.lr=0.1"]


def test_a_method_s_other_cells_wait_for_its_first_cell_which_decides_their_values(tmp_path, monkeypatch):
    """Two jobs, fedavg's two cells (tiny: dirichlet0.5, seeds 0 and 1), the later one listed first. The first cell
    runs first and diverges (its runs take a moment; the fake ``python -m pfedla.run`` writes them); the later cell
    starts only after it, so at the fallback trial's values, never at the chosen ones. A later cell whose first
    cell is neither finished nor in the step is refused, naming it."""
    import threading
    import time

    from pfedla.benchmark import fallback, grid
    from pfedla.benchmark.paths import Cell, Places

    spec = load_spec(spec_file(tmp_path))
    places = Places.of(spec)
    trial = lambda n, lr, value: {"number": n, "params": {"client.lr": lr}, "value": value}
    trials = [trial(0, 0.1, 0.9), trial(1, 0.05, 0.8)]
    places.search_record("fedavg").parent.mkdir(parents=True)
    places.search_record("fedavg").write_text(json.dumps({"chosen": trials[0], "trials": trials}))
    first, later = Cell("dirichlet0.5", "fedavg", 0), Cell("dirichlet0.5", "fedavg", 1)
    with pytest.raises(fallback.NotSearched, match="fedavg_s0.*--splits dirichlet0.5 --methods fedavg"):
        grid.run_cells(spec, places, [later], jobs=2, threads=1)

    started, lock = [], threading.Lock()

    def python_m_pfedla_run(command, **kwargs):  # writes the run a command asks for, a moment later
        args = dict(a.split("=", 1) for a in command if "=" in a)
        path = Path(args["hydra.run.dir"])
        with lock:
            started.append((path.name, args["client.lr"]))
        time.sleep(0.5)
        finished_run(path, 3, 1.0, rejected=7 if path == places.cell(first) else 0)
        return 0

    monkeypatch.setattr(grid.subprocess, "call", python_m_pfedla_run)
    grid.run_cells(spec, places, [later, first], jobs=2, threads=1)
    assert started == [("fedavg_s0", "0.1"), ("fedavg_t1", "0.05"), ("fedavg_s1", "0.05")], started
    assert fallback.fallback(spec, places, "fedavg") == fallback.Fallback(1)


def _curves(path: Path, rounds: int, a, b=None) -> Path:
    """metrics.csv of a run: validation (a) ``a(round)`` every round, (b) ``b(round)`` every 10th (if given)."""
    path.mkdir(parents=True, exist_ok=True)
    rows = [f"{r},{a(r)},{b(r) if b and r % 10 == 0 else ''}" for r in range(1, rounds + 1)]
    (path / "metrics.csv").write_text("round,val/acc_mean,val/adapted_acc_mean\n" + "\n".join(rows) + "\n")
    return path / "metrics.csv"


def test_a_cell_runs_on_when_either_score_s_validation_curve_still_rises(tmp_path):
    """100 rounds. Rising: slope > 0.5 points per 10 rounds, fitted over the last 30 rounds for (a), the last 50 for
    (b), whose rounds are every 10th. (b) rising at 1 point per 10 rounds beside a flat (a) (FedBABU's number is (b))
    runs on; so does (a) rising where the run has no (b) (Local); 0.5 exactly, or a rise before the window, does
    not. extension_cells picks exactly the rising cells of a grid."""
    from pfedla.benchmark import grid, run_dirs
    from pfedla.benchmark.paths import Cell, Places

    flat = lambda r: 0.9
    assert not run_dirs.still_rising(_curves(tmp_path / "flat", 100, flat, flat), 0.5)
    assert run_dirs.still_rising(_curves(tmp_path / "b", 100, flat, lambda r: 0.8 + 0.001 * r), 0.5)
    assert run_dirs.still_rising(_curves(tmp_path / "a", 100, lambda r: 0.8 + 0.0006 * r), 0.5)
    assert not run_dirs.still_rising(_curves(tmp_path / "edge", 100, lambda r: 0.8 + 0.0005 * r,
                                         lambda r: 0.8 + 0.0005 * r), 0.5)
    early = lambda r: 0.5 + 0.01 * min(r, 50)  # steep up to round 50, flat in both windows
    assert not run_dirs.still_rising(_curves(tmp_path / "early", 100, early, early), 0.5)

    spec = load_spec(spec_file(tmp_path, rounds=100, extend_rounds=200))
    places = Places.of(spec)
    rising = {("pfedla", 0): (flat, lambda r: 0.8 + 0.001 * r), ("fedavg", 1): (lambda r: 0.8 + 0.0006 * r, None)}
    for method in ("pfedla", "fedavg"):
        for seed in (0, 1):
            stored = places.stored(Cell("dirichlet0.5", method, seed))
            finished_run(stored, 100, 1.0)
            _curves(stored, 100, *rising.get((method, seed), (flat, flat)))
    picked = grid.extension_cells(spec, places, ["pfedla", "fedavg"], ["dirichlet0.5"])
    assert picked == [Cell("dirichlet0.5", "pfedla", 0, "extended"), Cell("dirichlet0.5", "fedavg", 1, "extended")]


def test_commands_print_the_final_runs_that_may_start_now_and_run_stores_them_without_running_them_again(
        tmp_path, monkeypatch):
    """tiny: before any cell, only each method's first cell may start (it decides the others' values). Its printed
    line, run in a shell as a scheduler would, leaves a finished run that ``run`` stores as it is; then the
    method's later cell may start."""
    import subprocess

    from pfedla.benchmark import grid
    from pfedla.benchmark.paths import Cell, Places

    spec = load_spec(spec_file(tmp_path))
    places = Places.of(spec)
    for method in ("pfedla", "fedavg"):
        trial = {"number": 0, "params": {"client.lr": 0.05}, "value": 0.9}
        places.search_record(method).parent.mkdir(parents=True, exist_ok=True)
        places.search_record(method).write_text(json.dumps({"chosen": trial, "trials": [trial]}))
    cells = grid.final_cells(spec, places, list(spec.methods), list(spec.splits))
    lines = grid.commands(spec, places, cells, threads=1)
    assert lines[0] == ("# tiny: 4 final cells left, 2 may start now; 2 wait for their method's first cell (or its "
                        "fallback), which decides their values: print the commands again once it has finished")
    runs = [line for line in lines if not line.startswith("#")]
    named = {line.split("hydra.run.dir=")[1].split()[0].rsplit("/", 1)[1]: line for line in runs}
    assert sorted(named) == ["fedavg_s0", "pfedla_s0"]
    assert all("client.lr=0.05" in line and "dataset.test_images=held_out" in line for line in runs)

    first = Cell("dirichlet0.5", "fedavg", 0)
    done = subprocess.run(named["fedavg_s0"], shell=True, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    monkeypatch.setattr(grid.subprocess, "call", lambda *a, **k: pytest.fail("a finished run ran again"))
    grid.run_cells(spec, places, [first], jobs=1, threads=1)
    stored = (places.stored(first) / "summary.json").read_bytes()
    assert stored == (places.cell(first) / "summary.json").read_bytes() and json.loads(stored)["rounds"] == 3
    later = [line for line in grid.commands(spec, places, grid.final_cells(spec, places, ["fedavg"], ["dirichlet0.5"]),
                                            threads=1) if not line.startswith("#")]
    assert len(later) == 1 and "fedavg_s1" in later[0]
