import math
import statistics

import numpy as np
import pytest

from pfedla.report import report
from pfedla.run import run
from tests.conftest import REPO


def test_report_table_matches_job_summaries_and_lists_failed_jobs(synthetic_cfg, tmp_path):
    summaries = {}
    for job, (algorithm, seed) in enumerate([("pfedla", 0), ("pfedla", 1), ("fedavg", 0), ("fedavg", 1)]):
        summaries[algorithm, seed] = run(
            synthetic_cfg(f"algorithm={algorithm}", f"seed={seed}"), tmp_path / f"{job}_{algorithm}"
        )
    failed = tmp_path / "4_pfedhn"
    (failed / ".hydra").mkdir(parents=True)
    (failed / "error.txt").write_text("ConfigError: algorithm.hn_lr must be > 0\n")

    text = report(tmp_path).read_text()
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    scores, spreads = text.split("## Spread over clients")

    def table(section):
        return {line.split("|")[1].strip(): line.split("|") for line in section.splitlines() if line.startswith("| ")}

    rows, spread_rows = table(scores), table(spreads)

    def cell(values):
        return f"{statistics.fmean(values) * 100:.2f} ± {statistics.stdev(values) * 100:.2f}"

    for algorithm in ("pfedla", "fedavg"):
        got = [summaries[algorithm, s] for s in (0, 1)]
        assert rows[algorithm][4].strip() == cell([g["best"]["test/acc_mean"] for g in got])  # at best val
        assert rows[algorithm][5].strip() == cell([g["final"]["test/acc_mean"] for g in got])
        assert rows[algorithm][6].strip() == cell([g["best_adapted"]["test/adapted_acc_mean"] for g in got])
        assert rows[algorithm][2].strip() == "0,1"
        mb = statistics.fmean([(g["bytes_down"] + g["bytes_up"]) / 1e6 for g in got])
        assert float(rows[algorithm][9]) == pytest.approx(mb, abs=0.05)
        # spread over clients at the best-validation round: worst client and std, averaged over seeds
        worst = statistics.fmean(min(g["best"]["client_acc"]) for g in got)
        assert float(spread_rows[algorithm][4]) == pytest.approx(100 * worst, abs=0.006)
        std = statistics.fmean(statistics.pstdev(g["best_adapted"]["adapted_client_acc"]) for g in got)
        assert float(spread_rows[algorithm][7]) == pytest.approx(100 * std, abs=0.006)
    self_weight = statistics.fmean(summaries["pfedla", s]["alpha_stats"]["layers"]["fc3"]["self"] for s in (0, 1))
    assert f"fc3 self {self_weight:.2f}" in text  # pFedLA's alpha statistics, mean over seeds
    assert "`4_pfedhn`: ConfigError: algorithm.hn_lr must be > 0" in text


def test_compare_experiment_sweeps_every_algorithm_over_three_seeds():
    text = (REPO / "conf/experiment/compare.yaml").read_text()
    from tests.test_config_groups import options

    swept = next(line for line in text.splitlines() if line.strip().startswith("algorithm:")).split(":")[1].strip()
    assert sorted(swept.split(",")) == options("algorithm") and "seed: 0,1,2" in text  # every algorithm, no other


def test_curves_keep_one_colour_per_algorithm_when_one_has_no_score_b(tmp_path):
    import matplotlib.pyplot as plt

    from pfedla.report import Job, draw_curves

    header = "round,val/acc_mean,test/acc_mean,test/adapted_acc_mean\n"
    groups = {}
    for name, adapted in (("fedavg", "0.7"), ("local", ""), ("pfedla", "0.8")):  # Local: no (b), as in a run
        path = tmp_path / name
        path.mkdir()
        (path / "metrics.csv").write_text(header + f"1,0.5,0.5,{adapted}\n2,0.6,0.6,{adapted}\n")
        groups[name] = [Job(path=path, summary={}, error=None)]
    fig = draw_curves(groups)
    colours = [{line.get_label().split()[0]: line.get_color() for line in ax.get_lines()} for ax in fig.axes[:3]]
    assert set(colours[0]) == {"fedavg", "local", "pfedla"} and set(colours[2]) == {"fedavg", "pfedla"}
    assert colours[2]["pfedla"] == colours[0]["pfedla"] != colours[0]["local"]
    assert [t.get_text().split()[0] for t in fig.axes[2].get_legend().get_texts()] == ["fedavg", "local", "pfedla"]
    plt.close(fig)


def test_a_run_from_before_a_key_existed_groups_with_todays_runs_of_the_same_experiment(tmp_path):
    from pfedla.report import Job, group_jobs

    def job(name, config):
        return Job(path=tmp_path / name, summary={"config": config, "final": {"round": 1}}, error=None)

    old = {"algorithm": {"name": "fedbn"}, "partition": {"name": "dirichlet", "alpha": 0.3}, "seed": 0}
    today = {"algorithm": {"name": "fedbn", "_target_": "pfedla.algorithms.fedavg.FedBN"}, "seed": 1,
             "partition": {"name": "dirichlet", "alpha": 0.3, "feature": "none", "groups": 4, "group_of": None,
                           "feature_level": None, "quantity": "none", "quantity_scale": 1.0}}
    other = {**today, "partition": {**today["partition"], "quantity": "zipf"}, "seed": 2}
    groups = group_jobs([job("old", old), job("today", today), job("other", other)])
    assert {label: [j.path.name for j in jobs] for label, jobs in groups.items()} == {
        "fedbn partition.quantity=none": ["old", "today"], "fedbn partition.quantity=zipf": ["other"]}


def test_the_results_verdict_pairs_methods_seed_by_seed():
    from pfedla.benchmark.fmnist_verdicts import _against, _paired, paired_difference

    # seeds 0..2 in both, seed 3 only in a: differences 2, 1, 3 points; mean 2, std 1, t = 2 / (1 / sqrt 3)
    diffs, mean, std, t = paired_difference({0: 0.90, 1: 0.80, 2: 0.85, 3: 0.5}, {0: 0.88, 1: 0.79, 2: 0.82})
    assert diffs == pytest.approx([2, 1, 3]) and mean == pytest.approx(2) and std == pytest.approx(1)
    assert t == pytest.approx(2 * 3 ** 0.5)
    assert paired_difference({0: 0.9}, {0: 0.8, 1: 0.7}) is None  # one common seed: nothing to pair
    row = lambda label, best, adapted: {"label": label, "by_seed": {"best": best, "best_adapted": adapted}}  # noqa: E731
    line = _paired(row("pfedla", {0: 0.1, 1: 0.1, 2: 0.1}, {0: 0.9, 1: 0.8, 2: 0.85}),
                   row("local", {0: 0.88, 1: 0.79, 2: 0.82}, {}), "best_adapted")  # Local's (b) is its (a)
    assert "+2.00, +1.00, +3.00 points, mean +2.00 ± 1.00" in line and "not significant" in line  # 3.46 < 4.303
    # differences 1, 1, 1.1 points: mean 1.0333, std 0.0577, t = 1.0333 / (0.0577 / sqrt 3) = 31.0
    a, b = {0: 0.90, 1: 0.80, 2: 0.85}, {0: 0.89, 1: 0.79, 2: 0.839}
    seeds = lambda by: {"best": {}, "best_adapted": by}  # noqa: E731
    rows = [{"label": "pfedla", "best": None, "best_adapted": (0.85, 0.05), "by_seed": seeds(a)},
            {"label": "fedavg", "best": None, "best_adapted": (0.8397, 0.05), "by_seed": seeds(b)}]
    line = _against(rows, "fedavg", "best_adapted", "(b) against FedAvg")
    assert line.startswith("- (b) against FedAvg: pFedLA +1.03 points.") and "|t| 31.00 vs 4.303" in line
    assert "; significant" in line and "not enough" in _against(rows, "local", "best", "(a) against Local")


def test_the_results_page_says_which_validation_curves_still_rise(tmp_path):
    from pfedla.benchmark.fmnist_verdicts import late_slope, rising_markdown

    # val = round / 100: one point a round, 10 points per 10 rounds; a constant curve: 0
    assert late_slope({r: r / 100 for r in range(1, 41)}) == pytest.approx(10)
    assert late_slope({r: 0.9 for r in range(1, 41)}) == pytest.approx(0)
    assert late_slope({10: 0.5, 20: 0.6}) is None  # two evaluations: no slope to fit
    # a noisy curve: the fit over its last 30 rounds equals numpy's least squares over those rounds
    noisy = {r: 0.8 + 0.0005 * r + (0.05 if r % 7 == 0 else 0) - (0.04 if r % 5 == 0 else 0) for r in range(1, 61)}
    window = sorted(r for r in noisy if r > 30)
    want = 1000 * np.polyfit(window, [noisy[r] for r in window], 1)[0]
    assert late_slope(noisy) == pytest.approx(want) and late_slope(noisy, window=60) != pytest.approx(want)
    # score (b), every 10 rounds: the fit goes through the evaluations in the window (rounds 80, 90, 100)
    assert late_slope({r: 0.9 + r / 1000 for r in range(10, 101, 10)}) == pytest.approx(1)

    class Job:  # what rising_markdown reads of a report Job: its run dir's metrics.csv
        def __init__(self, name, slope):
            self.path = tmp_path / name
            self.path.mkdir()
            rows = "".join(f"{r},{0.5 + slope * r}\n" for r in range(1, 41))
            (self.path / "metrics.csv").write_text("round,val/acc_mean\n" + rows)

    line = rising_markdown({"flat": [Job("f0", 0.0), Job("f1", 0.0004)], "rising": [Job("r0", 0.002)]})[0]
    assert "flat +0.20, rising +2.00." in line and "still rising: rising (" in line
    assert rising_markdown({"flat": [Job("b0", 0.0)]}, "val/adapted_acc_mean", "(b)") == []  # no such column

    class Adapted(Job):  # score (b), every 10 rounds: rising up to round 70, flat after
        def __init__(self, name):
            self.path = tmp_path / name
            self.path.mkdir()
            rows = "".join(f"{r},{min(r, 70) / 100}\n" for r in range(10, 101, 10))
            (self.path / "metrics.csv").write_text("round,val/adapted_acc_mean\n" + rows)

    line = rising_markdown({"m": [Adapted("a0")]}, "val/adapted_acc_mean", "(b)")[0]
    fitted = 1000 * np.polyfit([60, 70, 80, 90, 100], [0.6, 0.7, 0.7, 0.7, 0.7], 1)[0]  # over its last 50 rounds
    assert "last 50 rounds" in line and f"m +{fitted:.2f}." in line and fitted > 0.5  # over 30 rounds: 0


def test_the_results_page_replaces_a_split_only_when_all_its_cells_finished_and_a_new_machine_skips_them(
        tmp_path, monkeypatch):
    from pfedla.benchmark import fmnist_results as results_fmnist
    from pfedla.benchmark.fmnist_results import METHODS, ROUNDS, SEEDS, _copy_finished, _rounds, cells_to_run

    def cell(root, split, name, said, logged):
        path = root / split / name
        path.mkdir(parents=True, exist_ok=True)
        (path / "summary.json").write_text(f'{{"rounds": {said}, "final": {{}}}}')
        (path / "metrics.csv").write_text("round,val/acc_mean\n" + "".join(f"{r},0.5\n" for r in range(1, logged + 1)))

    out, runs, pending = tmp_path / "grid", tmp_path / "runs", tmp_path / "pending"
    names = [f"{m}_s{s}" for s in SEEDS for m in METHODS]
    for name in names:  # the tables hold every cell of both splits at 50 rounds
        for split in ("dirichlet0.1", "pathological2"):
            cell(runs, split, name, 50, 50)
    cell(out, "dirichlet0.1", "pfedla_s0", ROUNDS, ROUNDS)  # one cell of this split has finished
    cell(out, "dirichlet0.1", "fedavg_s0", 50, 63)          # one is being extended: old summary, longer curve
    for name in names:                                      # every cell of this split has finished
        cell(out, "pathological2", name, ROUNDS, ROUNDS)
    cell(out, "dirichlet0.1", "notacell_s0", ROUNDS, ROUNDS)
    _copy_finished(out, runs, pending)

    assert _rounds(pending / "dirichlet0.1" / "pfedla_s0") == (ROUNDS, ROUNDS)  # waits for its split
    assert _rounds(runs / "dirichlet0.1" / "pfedla_s0") == (50, 50)             # the table keeps its runs
    assert not (pending / "dirichlet0.1" / "fedavg_s0").exists()
    assert not (pending / "dirichlet0.1" / "notacell_s0").exists()
    assert all(_rounds(runs / "pathological2" / name) == (ROUNDS, ROUNDS) for name in names)
    assert not (pending / "pathological2").exists()

    # a new machine (no grid output): cells the repository holds at the protocol's rounds are not run again
    monkeypatch.setattr(results_fmnist, "RUNS", runs)
    monkeypatch.setattr(results_fmnist, "PENDING", pending)
    todo = cells_to_run(tmp_path / "fresh", ["dirichlet0.1", "pathological2"], METHODS, SEEDS, ROUNDS)
    assert len(todo) == len(names) - 1 and ("dirichlet0.1", "pfedla", 0) not in todo
    assert all(split == "dirichlet0.1" for split, _, _ in todo)
    assert len(cells_to_run(tmp_path / "fresh", ["pathological2"], METHODS, SEEDS, ROUNDS + 1)) == len(names)


def test_extended_cells_are_scored_by_validation_up_to_the_protocols_rounds_and_past_them(tmp_path, monkeypatch):
    from pfedla.benchmark import fmnist_results as results_fmnist
    from pfedla.benchmark.fmnist_results import ROUNDS, _copy_extended, _rounds, cmd_extend, extension_markdown
    from pfedla.benchmark.fmnist_verdicts import best_by_validation

    end = 2 * ROUNDS

    def curve(seed):  # (a) climbs to round 150 then is flat (ties: the first wins); (b) every 10 rounds, to 120
        rows = []
        for r in range(1, end + 1):
            val = 0.5 + min(r, 150) / 1000 + 0.01 * seed
            test = 0.99 if r == 40 else val - 0.02  # the test-best round is never the one chosen
            adapted = ([0.7 + min(r, 120) / 1000 + 0.01 * seed] * 2) if r % 10 == 0 else ["", ""]
            rows.append([r, val, test, *adapted])
        return rows

    def cell(root, name, said, rows):
        path = root / "dirichlet0.1" / name
        path.mkdir(parents=True, exist_ok=True)
        (path / "summary.json").write_text(f'{{"rounds": {said}, "final": {{}}}}')
        header = "round,val/acc_mean,test/acc_mean,val/adapted_acc_mean,test/adapted_acc_mean\n"
        (path / "metrics.csv").write_text(header + "".join(",".join(map(str, row)) + "\n" for row in rows))

    rows = [dict(zip(("round", "val/acc_mean", "test/acc_mean"), map(str, row[:3]))) for row in curve(0)]
    assert best_by_validation(rows, upto=ROUNDS) == (ROUNDS, pytest.approx(0.58))
    assert best_by_validation(rows) == (150, pytest.approx(0.63))  # not 40 (test-best), not 200 (a later tie)

    out, extended = tmp_path / "extended_out", tmp_path / "extended"
    cell(out, "fedbn_s0", end, curve(0))
    cell(out, "fedbn_s1", end, curve(1))
    cell(out, "fedavg_s0", ROUNDS, curve(0)[:ROUNDS])          # not run past the protocol: not an extension
    cell(out, "fedavg_s1", ROUNDS, curve(1)[:ROUNDS + 30])     # being extended: old summary, longer curve
    _copy_extended(out, extended)
    assert sorted(p.name for p in (extended / "dirichlet0.1").iterdir()) == ["fedbn_s0", "fedbn_s1"]

    # pFedLA's table values (ROUNDS rounds): (a) 0.60 / 0.62, (b) 0.80 / 0.84
    pfedla = {"label": "pfedla", "by_seed": {"best": {0: 0.60, 1: 0.62}, "best_adapted": {0: 0.80, 1: 0.84}}}
    text = "\n".join(extension_markdown(extended / "dirichlet0.1", [pfedla]))
    # (a): 0.58 / 0.59 at ROUNDS, 0.63 / 0.64 at round 150; (b) 0.80 / 0.81 at ROUNDS, 0.82 / 0.83 at round 120
    row = f"| fedbn | 2 | {end} | 58.50 ± 0.71 | 63.50 ± 0.71 | 150, 150 | +0.00 | 80.50 ± 0.71 | 82.50 ± 0.71 | +0.00"
    assert row in text
    assert "minus fedbn at 200. Seed by seed" in text and "-3.00, -2.00 points, mean -2.50 ± 0.71" in text  # (a)
    assert "-2.00, +1.00 points, mean -0.50 ± 2.12" in text  # (b): 0.80 - 0.82, 0.84 - 0.83

    # extend: past the protocol only, from a finished cell with a checkpoint, copied once, then run there
    grid = tmp_path / "grid"
    cell(grid, "fedbn_s0", ROUNDS, curve(0)[:ROUNDS])
    ran = []
    monkeypatch.setattr(results_fmnist, "run_cell", lambda out, *c: ran.append((out, *c)) or ("", 0.0, 0))
    for name in ("RUNS", "PENDING"):
        monkeypatch.setattr(results_fmnist, name, tmp_path / "none")
    monkeypatch.setattr(results_fmnist, "EXTENDED", extended)
    args = lambda rounds: type("Args", (), dict(  # noqa: E731
        out=grid, extended_out=tmp_path / "ext", rounds=rounds, splits=["dirichlet0.1"], methods=["fedbn"], seeds=[0],
        workers=1, threads=1))()
    with pytest.raises(SystemExit, match="past the protocol"):
        cmd_extend(args(ROUNDS))
    with pytest.raises(SystemExit, match="with a checkpoint to extend"):
        cmd_extend(args(end))
    (grid / "dirichlet0.1" / "fedbn_s0" / "checkpoints").mkdir()
    (grid / "dirichlet0.1" / "fedbn_s0" / "checkpoints" / "last.ckpt").write_bytes(b"ckpt")
    cmd_extend(args(end))
    assert (tmp_path / "ext" / "dirichlet0.1" / "fedbn_s0" / "checkpoints" / "last.ckpt").read_bytes() == b"ckpt"
    assert ran == []  # the repository holds this cell at those rounds (docs/results/extended): not run again
    monkeypatch.setattr(results_fmnist, "EXTENDED", tmp_path / "none")
    cmd_extend(args(end))
    assert ran == [(tmp_path / "ext", "dirichlet0.1", "fedbn", 0, 1, end)]
    assert _rounds(grid / "dirichlet0.1" / "fedbn_s0") == (ROUNDS, ROUNDS)  # the grid's own cell is untouched


def test_the_benchmark_tables_time_a_round_by_its_median_so_a_pause_does_not_count(tmp_path):
    """A hand-built run of 4 rounds whose machine was paused 50 minutes in one round: its wall time says 3008 s;
    its median round is 2.0 s and score (b)'s adaptation took 0.4 s in all (median 0: one round in four), so a
    round costs 2.0 + 0.4 / 4 = 2.1 s. A sweep's report shows the wall time, a benchmark page the round."""
    from pfedla.report import Job, table_markdown, table_rows
    from pfedla.timing import round_seconds

    timing = {"rounds_timed": 4, "round_s_median": 2.0, "adapt_s_median": 0.0, "adapt_s_total": 0.4}
    best = {"round": 4, "val/acc_mean": 0.5, "test/acc_mean": 0.5, "client_acc": [0.4, 0.6]}
    summary = {"config": {"seed": 0}, "rounds": 4, "wall_seconds": 3008.0, "timing": timing, "best": best,
               "final": best, "bytes_down": 0, "bytes_up": 0}
    assert round_seconds(summary) == pytest.approx(2.1)
    rows = table_rows({"fedavg": [Job(tmp_path, summary, None)]})
    assert table_markdown(rows)[2].endswith("| 3008 |") and "wall s" in table_markdown(rows)[0]
    assert table_markdown(rows, cost="round")[2].endswith("| 2.1 | – |")  # CPU seconds: not recorded
    untimed = {**summary, "timing": {}}
    assert table_markdown(table_rows({"fedavg": [Job(tmp_path, untimed, None)]}), cost="round")[2].endswith("| – | – |")
    # CPU seconds a round, over the seeds that recorded them: seed 1's 6 s over 4 rounds, seed 2's 10 s over 4
    cpu = [{**summary, "config": {"seed": seed}, "timing": {**timing, "cpu_rounds_timed": 4, "cpu_s_total": total}}
           for seed, total in ((1, 6.0), (2, 10.0))]
    table = table_markdown(table_rows({"fedavg": [Job(tmp_path, x, None) for x in (summary, *cpu)]}), cost="round")
    assert "| s a round | CPU s a round |" in table[0] and table[1].count("---") == 11
    assert table[2].endswith("| 2.1 | 2.0 (2 of 3 seeds) |")  # (1.5 + 2.5) / 2
    table = table_markdown(table_rows({"fedavg": [Job(tmp_path, x, None) for x in cpu]}), cost="round")
    assert table[2].endswith("| 2.1 | 2.0 |")


def test_a_benchmark_table_says_which_cpus_timed_its_runs(tmp_path):
    """Runs per CPU under the table: seed 1 ran on a Xeon, seed 2 began there and was resumed on an EPYC (it counts
    under both), seed 0 is from before rounds named their CPU; one CPU alone draws no warning."""
    from pfedla.report import Job, table_markdown, table_rows, timed_on

    best = {"round": 4, "val/acc_mean": 0.5, "test/acc_mean": 0.5, "client_acc": [0.4, 0.6]}

    def run(seed, models):
        return Job(tmp_path, {"config": {"seed": seed}, "rounds": 4, "wall_seconds": 8.0, "best": best, "final": best,
                              "bytes_down": 0, "bytes_up": 0,
                              "timing": {"rounds_timed": 4, "round_s_median": 2.0, "cpu_models": models}}, None)

    rows = table_rows({"fedavg": [run(0, None), run(1, {"Xeon": 4})], "fedbn": [run(2, {"Xeon": 2, "EPYC": 2})]})
    assert timed_on(rows) == ("Timed on: EPYC (1 run); Xeon (2 runs); not recorded (1 run, from before runs recorded "
                              "it). Seconds measured on different CPUs do not compare.")
    assert table_markdown(rows, cost="round")[-1] == timed_on(rows)
    assert not any(line.startswith("Timed on") for line in table_markdown(rows))  # a sweep's wall-time table
    alike = table_rows({"fedavg": [run(0, {"EPYC": 4}), run(1, {"EPYC": 4})]})
    assert timed_on(alike) == "Timed on: EPYC (2 runs)."


def test_a_runs_cpu_seconds_a_round_are_its_cpu_total_over_the_rounds_that_recorded_them():
    from pfedla.timing import cpu_round_seconds

    timing = {"rounds_timed": 4, "round_s_median": 2.0, "cpu_rounds_timed": 2, "cpu_s_total": 3.0}
    assert cpu_round_seconds({"timing": timing}) == 1.5
    assert math.isnan(cpu_round_seconds({"timing": {**timing, "cpu_rounds_timed": 0}}))
    assert math.isnan(cpu_round_seconds({"timing": {"rounds_timed": 4, "round_s_median": 2.0}}))  # older runs
