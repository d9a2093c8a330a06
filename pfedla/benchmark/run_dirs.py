"""What a run folder says about its run: how many rounds it finished, whether it diverged, whether its validation
curve still rises. The grid, its fallback rule, its status and its pages read runs through these."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from pfedla.sampling import clients_per_round
from pfedla.stats import SCORE_CURVES, curve, late_slope


def rounds_of(path: Path) -> tuple[int, int]:
    """A run dir's rounds by its summary.json and by the last row of its metrics.csv (0 where missing)."""
    summary, metrics = path / "summary.json", path / "metrics.csv"
    said = json.loads(summary.read_text()).get("rounds", 0) if summary.is_file() else 0
    logged = 0
    if metrics.is_file():
        with open(metrics) as f:
            logged = max((int(r["round"]) for r in csv.DictReader(f) if r.get("round")), default=0)
    return said, logged


def finished(path: Path, rounds: int) -> bool:
    """A run dir that finished ``rounds`` rounds or more: not stopped by a signal, its summary and curve agreeing
    (a cell being extended has its old, shorter summary beside a longer metrics.csv)."""
    summary = path / "summary.json"
    if not summary.is_file() or '"stopped_by_signal"' in summary.read_text():
        return False
    said, logged = rounds_of(path)
    return said >= rounds and said == logged


def still_rising(metrics: Path, rising: float) -> bool:
    """Whether either score's validation curve still climbs at a run's end: (a) over its last WINDOW rounds, (b)
    (adapted every few rounds, where the run has it) over its last WINDOW_ADAPTED (``pfedla.stats.SCORE_CURVES``).
    A method whose number is (b) (FedBABU, whose (a) has an untrained head) rises or not by (b)."""
    with open(metrics) as f:
        rows = list(csv.DictReader(f))
    slopes = (late_slope(curve(rows, key), window) for key, window in SCORE_CURVES)
    return any(slope is not None and round(slope, 2) > rising for slope in slopes)


DIVERGED_SHARE = 0.5  # a run diverged when the server rejected more than this share of its client updates


def diverged(summary: dict) -> bool:
    """Whether a finished run diverged: the server rejected (non-finite) more than ``DIVERGED_SHARE`` of the client
    updates of its rounds (``fallback``: what a method whose first cell diverged runs with)."""
    fed = summary["config"]["federation"]
    updates = summary["rounds"] * clients_per_round(fed["num_clients"], fed["participation"])
    return len(summary.get("rejected_updates", [])) > DIVERGED_SHARE * updates


def diverged_run(path: Path, rounds: int) -> bool:
    """A run dir (or stored cell) that finished ``rounds`` rounds and diverged."""
    return finished(path, rounds) and diverged(json.loads((path / "summary.json").read_text()))
