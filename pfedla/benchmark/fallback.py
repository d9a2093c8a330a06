"""The values a method's final cells run with: its search's chosen trial, or a fallback trial.

A method whose first cell (the first split, its first seed) diverged at the chosen values (``diverged``: the server
rejected most of its updates as non-finite) falls back to the next-best trial of its own search that does not
diverge at full scale (``fallback``): trials in order of proxy value, repeats of the same values skipped, each run
as a proxy-check cell of the first split's first seed. That trial's values then stand in for the chosen ones in all
of the method's final cells; the diverged run moves to ``diverged/`` in the store and the work folder, and the
fallback trial's run becomes the first cell (grid.py's ``settle_fallback``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pfedla.benchmark.paths import Cell, Places
from pfedla.benchmark.run_dirs import diverged_run, finished
from pfedla.benchmark.search import chosen_overrides
from pfedla.benchmark.spec import BenchmarkSpec


class NotSearched(RuntimeError):
    """A final run needs what decides its values: its method's finished search, and its method's first cell."""


def search_record(places: Places, method: str) -> dict:
    record = places.search_record(method)
    if not record.is_file():
        raise NotSearched(f"method {method} has no finished search ({record}); run the step `search` first")
    return json.loads(record.read_text())


def first_cell(spec: BenchmarkSpec, method: str, kind: str = "runs") -> Cell:
    """A method's first final cell: the first split, its first seed (``kind`` diverged: where it moves)."""
    split = next(iter(spec.splits))
    return Cell(split, method, spec.splits[split].seeds[0], kind)


def probe_cell(spec: BenchmarkSpec, method: str, trial: int) -> Cell:
    """A trial's run at full scale: the proxy-check cell of the method's first cell."""
    first = first_cell(spec, method)
    return Cell(first.split, method, first.seed, "proxy_check", trial)


def chosen_run(spec: BenchmarkSpec, places: Places, method: str) -> Cell:
    """The chosen values' own run at full scale: the first cell, or where it moved once it diverged."""
    moved = first_cell(spec, method, "diverged")
    return moved if places.stored(moved).is_dir() else first_cell(spec, method)


@dataclass(frozen=True)
class Fallback:
    """The trial whose values a method's final cells run with, its first cell having diverged at the chosen ones.
    ``trial`` None: every other trial diverged too (the cells keep the chosen values); ``pending``: that trial's
    proxy-check cell has not finished yet."""

    trial: int | None
    pending: bool = False


def fallback(spec: BenchmarkSpec, places: Places, method: str) -> Fallback | None:
    """None while the method's first cell has not diverged (or not finished); else its fallback trial."""
    moved = first_cell(spec, method, "diverged")
    if not (finished(places.stored(moved), spec.rounds) or diverged_run(places.stored(first_cell(spec, method)),
                                                                         spec.rounds)):
        return None
    record = search_record(places, method)
    tried = [record["chosen"]["params"]]
    done = sorted((t for t in record["trials"] if t["value"] is not None), key=lambda t: (-t["value"], t["number"]))
    for trial in done:
        if trial["params"] in tried:
            continue
        tried.append(trial["params"])
        probe = probe_cell(spec, method, trial["number"])
        if not finished(places.stored(probe), spec.rounds):
            return Fallback(trial["number"], pending=True)
        if not diverged_run(places.stored(probe), spec.rounds):
            return Fallback(trial["number"])
    return Fallback(None)


def values_for(spec: BenchmarkSpec, places: Places, cell: Cell) -> list[str]:
    """The searched values a cell runs with: the chosen trial's, or the fallback trial's once the method's first cell
    diverged and that trial did not (``run_cell`` settles it before it runs any other cell of the method), or (proxy
    check) its own trial's."""
    record = search_record(places, cell.method)
    number = cell.trial
    if number is None:
        settled = fallback(spec, places, cell.method)
        if settled is None or settled.trial is None or settled.pending:
            return chosen_overrides(record)
        number = settled.trial
    trial = next(t for t in record["trials"] if t["number"] == number)
    return chosen_overrides({"chosen": trial})
