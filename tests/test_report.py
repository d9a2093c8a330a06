import statistics

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
    rows = {line.split("|")[1].strip(): line.split("|") for line in text.splitlines() if line.startswith("| ")}
    for algorithm in ("pfedla", "fedavg"):
        finals = [summaries[algorithm, s]["final"]["test/acc_mean"] * 100 for s in (0, 1)]
        mean, std = statistics.fmean(finals), statistics.stdev(finals)
        assert rows[algorithm][4].strip() == f"{mean:.2f} ± {std:.2f}"
        assert rows[algorithm][2].strip() == "0,1"
        mb = statistics.fmean([(summaries[algorithm, s]["bytes_down"] + summaries[algorithm, s]["bytes_up"]) / 1e6
                               for s in (0, 1)])
        assert float(rows[algorithm][7]) == pytest.approx(mb, abs=0.05)
    assert "`4_pfedhn`: ConfigError: algorithm.hn_lr must be > 0" in text


def test_compare_experiment_sweeps_every_algorithm_over_three_seeds():
    text = (REPO / "conf/experiment/compare.yaml").read_text()
    assert "algorithm: pfedla,heurpfedla,fedavg,fedbn,pfedhn,local" in text and "seed: 0,1,2" in text
