"""Exact reductions, checked on the grid's own runs: a method the yaml says must equal another bit for bit
(``reductions``; pFedLA with alpha fixed to self is Local) has, on every seed both finished, the same score (a) on
validation and test and the same training loss in every round of metrics.csv, where both ran at the same values."""

from __future__ import annotations

import csv
from pathlib import Path

from pfedla.benchmark.fallback import values_for
from pfedla.benchmark.paths import Cell, Places
from pfedla.benchmark.run_dirs import finished
from pfedla.benchmark.spec import BenchmarkSpec

COLUMNS = ("round", "val/acc_mean", "test/acc_mean", "test/acc_weighted", "train/loss")


def _columns(metrics: Path) -> list[tuple[str, ...]]:
    with open(metrics) as f:
        return [tuple(row[c] for c in COLUMNS) for row in csv.DictReader(f)]


def first_difference(a: Path, b: Path) -> str | None:
    """None where the two metrics.csv agree character for character in ``COLUMNS`` (the same float bits: both are
    written by the same code); else where they first differ."""
    rows_a, rows_b = _columns(a), _columns(b)
    for row_a, row_b in zip(rows_a, rows_b):
        for column, x, y in zip(COLUMNS, row_a, row_b):
            if x != y:
                return f"round {row_a[0]}, {column}: {x} vs {y}"
    if len(rows_a) != len(rows_b):
        return f"{len(rows_a)} rows vs {len(rows_b)}"
    return None


def reduction_lines(spec: BenchmarkSpec, places: Places) -> list[str]:
    """The page's account of each reduction: the seeds it holds on, per split, and any where it does not."""
    if not spec.reductions:
        return []
    pairs = ", ".join(f"{a} = {b}" for a, b in spec.reductions.items())
    lines = ["## Exact reductions", "",
             f"Methods that must equal another bit for bit ({pairs}): score (a) on validation and test and the "
             f"training loss (`{'`, `'.join(COLUMNS[1:])}`), every round of metrics.csv, on every seed "
             "both finished at the same values.", ""]
    for method, other in spec.reductions.items():
        held, failed, apart = [], [], []
        for split, about in spec.splits.items():
            seeds = []
            for seed in about.seeds:
                a, b = Cell(split, method, seed), Cell(split, other, seed)
                if not (finished(places.stored(a), spec.rounds) and finished(places.stored(b), spec.rounds)):
                    continue
                if sorted(values_for(spec, places, a)) != sorted(values_for(spec, places, b)):
                    apart.append(f"{split} seed {seed}")
                    continue
                where = first_difference(places.stored(a) / "metrics.csv", places.stored(b) / "metrics.csv")
                if where is None:
                    seeds.append(seed)
                else:
                    failed.append(f"{split} seed {seed} (first at {where})")
            if seeds:
                held.append(f"{split} (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})")
        line = f"- {method} = {other}: " + (f"equal on {'; '.join(held)}" if held else "no seed both finished yet")
        if apart:
            line += f"; not compared where their searched values differ: {'; '.join(apart)}"
        line += f"; **differs** on {'; '.join(failed)}." if failed else "; differs on none."
        lines.append(line)
    return lines
