"""What `python -m pfedla.benchmark <name> status` and the pages count of a grid: cells done, partial and new, the
machine time left (measured on this machine's CPU where it can be), run hours by CPU and each search's trial hours;
all against numbers computed by hand from runs written by hand."""

import json
import math
import shutil

import pytest

from pfedla.benchmark.spec import load_spec
from pfedla.compute import cpu_model
from tests.benchmark_helpers import benchmark, finished_run, spec_file


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

    spec = load_spec(spec_file(tmp_path))
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

    spec = load_spec(spec_file(tmp_path))
    places = Places.of(spec)
    finished_run(places.stored(Cell("dirichlet0.5", "pfedla", 0)), 3, 2.0, adapt_total=0.3)
    finished_run(places.stored(Cell("dirichlet0.5", "fedavg", 0)), 3, 1.0)
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

    finished_run(places.stored(Cell("dirichlet0.5", "fedavg", 0)), 3, 1.0)
    shown = benchmark(str(tmp_path / "bench.yaml"), "status", "--jobs", "2")
    assert shown.returncode == 0, shown.stderr
    assert "| dirichlet0.5 | 2 | 1/4 | - | pfedla_s1 2 | 2 | 7 | 0.0 (2 cells by the split's median) |" in shown.stdout
    assert f"left: {(1 + 3 + 3) * 1.0 / 3600:.1f} cell hours" in shown.stdout, shown.stdout
    assert "its CPU seconds where it recorded them (0 of 1 finished cells)" in shown.stdout
    assert f"the finished cells ran on: not recorded (1); this machine: {cpu_model()}" in shown.stdout

    # a cell that recorded its CPU seconds is measured by them (1.8 s over 3 rounds: 0.6 s), not its wall seconds
    shutil.rmtree(places.stored(Cell("dirichlet0.5", "fedavg", 0)))
    finished_run(places.stored(Cell("dirichlet0.5", "fedavg", 0)), 3, 1.0, cpu_total=1.8, cpu="Test CPU")
    row = status.split_status(spec, places, "dirichlet0.5", ["pfedla", "fedavg"])
    assert row.by_cpu == 1 and row.cell_seconds_left == pytest.approx((1 + 3 + 3) * 0.6)
    assert row.diverged == [] and row.cpus == {"Test CPU": 1}
    shown = benchmark(str(tmp_path / "bench.yaml"), "status", "--jobs", "2")
    assert "the finished cells ran on: Test CPU (1); this machine:" in shown.stdout, shown.stdout
    from pfedla.benchmark.render import cells_markdown  # the page's run time, by CPU where more than one ran cells

    assert "By CPU:" not in "\n".join(cells_markdown(spec, places))
    finished_run(places.stored(Cell("dirichlet0.5", "pfedla", 0)), 3, 2400.0)
    assert ("(2.0 h of run time in all" in "\n".join(cells_markdown(spec, places)) and
            "By CPU: 2.0 h on a CPU not recorded; 0.0 h on Test CPU." in "\n".join(cells_markdown(spec, places)))
    shutil.rmtree(places.stored(Cell("dirichlet0.5", "pfedla", 0)))

    # 3 rounds x 4 clients: 7 of 12 updates rejected is more than half (diverged), 6 is not
    for rejected, names in ((6, []), (7, ["fedavg_s0"])):
        shutil.rmtree(places.stored(Cell("dirichlet0.5", "fedavg", 0)))
        finished_run(places.stored(Cell("dirichlet0.5", "fedavg", 0)), 3, 1.0, rejected=rejected)
        assert status.split_status(spec, places, "dirichlet0.5", ["pfedla", "fedavg"]).diverged == names
    shown = benchmark(str(tmp_path / "bench.yaml"), "status", "--jobs", "2")
    assert "| dirichlet0.5 | 2 | 1/4 | fedavg_s0 | pfedla_s1 2 |" in shown.stdout, shown.stdout


def test_status_measures_a_method_by_its_cells_on_this_machine_s_cpu_where_it_has_them(tmp_path):
    """tiny: 1 split x 2 seeds x {pfedla, fedavg}, 3 rounds, CPU seconds by hand. A method measured on this CPU and
    on another is measured by this CPU's cells alone, and so is a split for a method with no finished cell; a method
    measured elsewhere only keeps those cells. A cell resumed across CPUs is not this CPU's."""
    from pfedla.benchmark import status
    from pfedla.benchmark.paths import Cell, Places

    spec = load_spec(spec_file(tmp_path))
    places = Places.of(spec)
    here, split = cpu_model(), "dirichlet0.5"

    def done(method, seed, cpu_total, cpu):
        path = places.stored(Cell(split, method, seed))
        shutil.rmtree(path, ignore_errors=True)
        finished_run(path, 3, 99.0, cpu_total=cpu_total, cpu=cpu)
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
    shown = benchmark(str(tmp_path / "bench.yaml"), "status", "--jobs", "2")
    assert "0 ran wholly on this machine's CPU, and where a method (else its split) has such cells" in shown.stdout


def test_status_adds_the_cells_run_on_and_the_proxy_check_by_hand(tmp_path):
    """tiny (3 rounds, run on to 5; proxy check: pfedla's best 2 trials). Done: pfedla_s0 (flat, 1440 s a round) and
    fedavg_s0 (rising, 720 s a round), no checkpoint on this machine. Run on: fedavg_s0's 5 rounds again, 1.0 h;
    1 of 2 finished cells rose, so the 2 cells left add 2 x 1/2 x 2 rounds x 1080 s (the split's median) = 0.6 h.
    Proxy check: pfedla's next-best trial, 3 rounds x 1440 s = 1.2 h."""
    from pfedla.benchmark import status
    from pfedla.benchmark.paths import Cell, Places

    spec = load_spec(spec_file(tmp_path))
    places = Places.of(spec)
    finished_run(places.stored(Cell("dirichlet0.5", "pfedla", 0)), 3, 1440.0)
    rising = places.stored(Cell("dirichlet0.5", "fedavg", 0))
    finished_run(rising, 3, 720.0)
    (rising / "metrics.csv").write_text("round,val/acc_mean\n1,0.5\n2,0.6\n3,0.7\n")  # 100 points per 10 rounds
    trials = [{"number": n, "params": {"client.lr": lr}, "value": v} for n, lr, v in ((0, 0.1, 0.9), (1, 0.2, 0.8),
                                                                                    (2, 0.3, 0.7))]
    places.search_record("pfedla").parent.mkdir(parents=True)
    places.search_record("pfedla").write_text(json.dumps({"chosen": trials[0], "trials": trials}))
    rows = [status.split_status(spec, places, "dirichlet0.5", ["pfedla", "fedavg"])]
    lines = status.extra_lines(spec, places, ["pfedla", "fedavg"], rows)
    assert lines == ["run on to 5 rounds: 1 finished cells still rise (1.0 cell hours at their methods' seconds a "
                     "round); 1 of 2 finished cells rose, so about 0.6 cell hours more if the cells left rise as often",
                     "proxy check (pfedla): 1 cells left, 1.2 cell hours"]
    shown = "\n".join(status.report(spec, places, ["pfedla", "fedavg"], ["dirichlet0.5"], 2).splitlines())
    assert "on top of that:\n- run on to 5 rounds: 1 finished cells" in shown
