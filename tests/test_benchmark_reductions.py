"""The results page checks the yaml's exact reductions on the grid's own runs (pfedla_self = local): equal where
every round's score (a) and training loss agree character for character, "differs" naming the first round and
column where not, and no comparison where the two ran at different searched values; on runs written by hand."""

import json

import pytest

from pfedla.benchmark.spec import load_spec
from pfedla.errors import ConfigError
from tests.benchmark_helpers import spec_file

COLUMNS = "round,val/acc_mean,test/acc_mean,test/acc_weighted,train/loss,comm/bytes_down"


def _run(path, rounds=3, change=None, bytes_down=0):
    """A finished run of ``rounds`` rounds; ``change`` (round, column index, value) alters one entry."""
    path.mkdir(parents=True, exist_ok=True)
    rows = [[str(r), f"0.{50 + r}1", f"0.{40 + r}3", f"0.{40 + r}7", f"1.{r}9", str(bytes_down)]
            for r in range(1, rounds + 1)]
    if change:
        rows[change[0] - 1][change[1]] = change[2]
    (path / "metrics.csv").write_text(COLUMNS + "\n" + "".join(",".join(r) + "\n" for r in rows))
    config = {"federation": {"num_clients": 4, "participation": 1.0}}  # none rejected: not diverged
    (path / "summary.json").write_text(json.dumps({"rounds": rounds, "config": config, "rejected_updates": []}))


def _searched(places, method, lr):
    places.search_record(method).parent.mkdir(parents=True, exist_ok=True)
    trial = {"number": 0, "params": {"client.lr": lr}, "value": 0.9}
    places.search_record(method).write_text(json.dumps({"chosen": trial, "trials": [trial]}))


def test_the_page_says_where_a_reduction_holds_bit_for_bit_and_where_it_does_not(tmp_path):
    from pfedla.benchmark.paths import Cell, Places
    from pfedla.benchmark.reductions import reduction_lines

    spec = load_spec(spec_file(tmp_path, reductions={"pfedla": "fedavg"}))
    places = Places.of(spec)
    _searched(places, "pfedla", 0.1)
    _searched(places, "fedavg", 0.1)
    assert "pfedla = fedavg: no seed both finished yet; differs on none." in "\n".join(reduction_lines(spec, places))
    for seed in (0, 1):  # the bytes differ by design (not a compared column)
        _run(places.stored(Cell("dirichlet0.5", "pfedla", seed)), bytes_down=5)
        _run(places.stored(Cell("dirichlet0.5", "fedavg", seed)))
    page = "\n".join(reduction_lines(spec, places))
    assert "- pfedla = fedavg: equal on dirichlet0.5 (seeds 0, 1); differs on none." in page

    # the last bit of one test score in round 2 of seed 1
    _run(places.stored(Cell("dirichlet0.5", "fedavg", 1)), change=(2, 2, "0.4200000000000001"))
    page = "\n".join(reduction_lines(spec, places))
    assert ("- pfedla = fedavg: equal on dirichlet0.5 (seed 0); **differs** on dirichlet0.5 seed 1 (first at round 2, "
            "test/acc_mean: 0.423 vs 0.4200000000000001).") in page

    _searched(places, "fedavg", 0.2)  # other values: the runs need not agree, and are not compared
    page = "\n".join(reduction_lines(spec, places))
    assert ("no seed both finished yet; not compared where their searched values differ: dirichlet0.5 seed 0; "
            "dirichlet0.5 seed 1; differs on none.") in page


def test_a_reduction_naming_a_method_the_benchmark_lacks_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="reductions.pfedla=local names a method not among the methods"):
        load_spec(spec_file(tmp_path, reductions={"pfedla": "local"}))
