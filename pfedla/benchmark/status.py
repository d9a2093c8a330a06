"""``status``: where a benchmark's final runs stand, and the machine time the rest needs, estimated from the cells
that finished.

A final cell (split x method x seed) is done (the store holds its finished run; ``diverged`` if the server rejected
most of its updates, ``run_dirs.diverged``), partial (its work folder has a
checkpoint; ``rounds`` is how far its metrics.csv got, and a resume goes on from the last checkpoint at or before
it) or new. A round's seconds, for the estimate, come from finished cells of the same method on the same split,
else of any method on that split, else the split is unmeasured: per cell, its CPU seconds a round
(``pfedla.timing.cpu_round_seconds``: neither the load beside it nor a pause adds any) where it recorded them, else
its wall seconds a round (``pfedla.timing.round_seconds``: its median round, with score (b)'s adaptation as its
mean over the rounds; a pause barely moves it, the load beside it does); the median over the cells. A cell's
seconds are cell seconds at the grid's one thread a cell (cores / ``--jobs``): the machine time left is the cell
time over ``--jobs``. The cells run on past the rounds (``extend``) and the proxy check's come on top: those
known to run on, and the cells left at the rate the finished ones rose. The same code runs at different speeds
on different CPUs (a round names its CPU, ``pfedla.compute.cpu_model``), so where a method (else the split) has
finished cells that ran wholly on this machine's CPU and timed their CPU seconds, only those measure it: the
estimate then holds for this machine. The report names the CPUs the finished cells ran on beside this machine's.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from dataclasses import dataclass, field

from pfedla.benchmark.grid import checked_methods, extension_cells, proxy_check_cells
from pfedla.benchmark.paths import Cell, Places
from pfedla.benchmark.run_dirs import diverged, finished, rounds_of, still_rising
from pfedla.benchmark.spec import BenchmarkSpec
from pfedla.compute import cpu_model
from pfedla.timing import cpu_models, cpu_round_seconds, round_seconds


@dataclass
class SplitStatus:
    split: str
    done: int
    partial: dict[str, int]  # cell name -> rounds its metrics.csv reached
    new: int
    rounds_left: int  # rounds the partial and new cells still need
    cell_seconds_left: float  # nan: the split has no finished cell to measure a round by
    unmeasured: int  # cells left whose round seconds are the split's, not their method's
    by_cpu: int = 0  # finished cells measured by their CPU seconds (the rest by their wall seconds)
    diverged: list[str] = field(default_factory=list)  # finished cells that diverged (run_dirs.diverged)
    cpus: Counter = field(default_factory=Counter)  # finished cells per CPU they ran on ("" : not recorded)
    here: int = 0  # finished cells measured on this machine's CPU alone (by their CPU seconds)
    per_method: dict[str, float] = field(default_factory=dict)  # method -> its seconds a round (as estimated)
    per_split: float = math.nan  # the split's seconds a round (a method with no finished cell; nan: none)


def seconds_a_round(summary: dict) -> tuple[float, bool]:
    """A finished cell's seconds a round, and whether they are CPU seconds (else wall; NaN: untimed)."""
    cpu = cpu_round_seconds(summary)
    return (cpu, True) if not math.isnan(cpu) else (round_seconds(summary), False)


def preferred(seconds: list[tuple[float, bool]]) -> list[float]:
    """Of finished cells' (seconds a round, measured on this machine's CPU), those of this CPU where there are
    any, else all."""
    here = [s for s, on_this_cpu in seconds if on_this_cpu]
    return here or [s for s, _ in seconds]


def split_status(spec: BenchmarkSpec, places: Places, split: str, methods: list[str]) -> SplitStatus:
    measured: dict[str, list[tuple[float, bool]]] = {}  # method -> (seconds a round, on this machine's CPU)
    left: list[tuple[str, int]] = []  # (method, rounds left)
    done, partial, by_cpu, failed, cpus = 0, {}, 0, [], Counter()
    for seed in spec.splits[split].seeds:
        for method in methods:
            cell = Cell(split, method, seed)
            if finished(places.stored(cell), spec.rounds):
                done += 1
                summary = json.loads((places.stored(cell) / "summary.json").read_text())
                if diverged(summary):
                    failed.append(cell.name)
                cpus.update(cpu_models(summary) or [""])  # cells, not rounds
                seconds, cpu = seconds_a_round(summary)
                if not math.isnan(seconds):
                    measured.setdefault(method, []).append((seconds, cpu and cpu_models(summary) == [cpu_model()]))
                    by_cpu += cpu
                continue
            work = places.cell(cell)
            reached = rounds_of(work)[1] if (work / "checkpoints" / "last.ckpt").is_file() else 0
            if reached:
                partial[cell.name] = reached
            left.append((method, spec.rounds - reached))
    on_split = [s for values in measured.values() for s in values]
    seconds, unmeasured = 0.0, 0
    for method, rounds in left:
        if method in measured:
            seconds += rounds * statistics.median(preferred(measured[method]))
        elif on_split:
            seconds += rounds * statistics.median(preferred(on_split))
            unmeasured += 1
        else:
            seconds = math.nan
    return SplitStatus(split, done, partial, len(left) - len(partial), sum(r for _, r in left), seconds, unmeasured,
                       by_cpu, failed, cpus, sum(here for _, here in on_split),
                       {m: statistics.median(preferred(v)) for m, v in measured.items()},
                       statistics.median(preferred(on_split)) if on_split else math.nan)


def _seconds(row: SplitStatus, method: str) -> float:
    return row.per_method.get(method, row.per_split)


def _extension_start(spec: BenchmarkSpec, places: Places, cell: Cell) -> int:
    """The round an extended cell goes on from here: its own checkpoint's, else the table's run's checkpoint
    (``rounds``), else none on this machine (0: the table's run runs again)."""
    def checkpointed(c: Cell) -> bool:
        return (places.cell(c) / "checkpoints" / "last.ckpt").is_file()

    if checkpointed(cell):
        return rounds_of(places.cell(cell))[1]
    return spec.rounds if checkpointed(Cell(cell.split, cell.method, cell.seed)) else 0


def extra_lines(spec: BenchmarkSpec, places: Places, methods: list[str], rows: list[SplitStatus]) -> list[str]:
    """The work beyond the final runs, in cell hours: the cells run on past the rounds (those known to rise, and
    the cells left at the rate the finished ones rose) and the proxy check's cells."""
    by_split = {r.split: r for r in rows}
    for split in spec.splits:  # the proxy check runs on the first split, whichever splits were asked for
        by_split.setdefault(split, split_status(spec, places, split, methods))
    lines = []
    if spec.extend_rounds:
        known = extension_cells(spec, places, methods, [r.split for r in rows])
        hours = 0.0
        for cell in known:
            hours += (spec.extend_rounds - _extension_start(spec, places, cell)) * _seconds(
                by_split[cell.split], cell.method) / 3600
        rose = finished_cells = 0
        expected = 0.0
        for row in rows:
            done = [Cell(row.split, m, s) for s in spec.splits[row.split].seeds for m in methods
                    if finished(places.stored(Cell(row.split, m, s)), spec.rounds)]
            up = [c for c in done if still_rising(places.stored(c) / "metrics.csv", spec.rising)]
            rose, finished_cells = rose + len(up), finished_cells + len(done)
            if done:
                left = len(spec.splits[row.split].seeds) * len(methods) - len(done)
                expected += left * len(up) / len(done) * (spec.extend_rounds - spec.rounds) * row.per_split / 3600
        lines.append(f"run on to {spec.extend_rounds} rounds: {len(known)} finished cells still rise ("
                     f"{hours:.1f} cell hours at their methods' seconds a round); {rose} of {finished_cells} finished "
                     f"cells rose, so about {expected:.1f} cell hours more if the cells left rise as often")
    if spec.proxy_check.top:
        checked = [m for m in checked_methods(spec, places) if m in methods]
        searched = all(places.search_record(m).is_file() for m in checked)
        if checked and searched:
            cells = proxy_check_cells(spec, places, checked)
            hours = sum(spec.rounds * _seconds(by_split[c.split], c.method) for c in cells) / 3600
            lines.append(f"proxy check ({', '.join(checked)}): {len(cells)} cells left, {hours:.1f} cell hours")
        elif checked:
            lines.append(f"proxy check ({', '.join(checked)}): its cells are known once the searches finished")
        else:
            lines.append("proxy check: its methods are known once the first split's first seed has its final runs")
    return lines


def report(spec: BenchmarkSpec, places: Places, methods: list[str], splits: list[str], jobs: int) -> str:
    rows = [split_status(spec, places, split, methods) for split in splits]
    lines = [f"{spec.name}: final runs of {spec.rounds} rounds, {len(methods)} methods",
             "| split | seeds | done | diverged | partial (rounds reached) | new | rounds left "
             "| cell hours left (est.) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = len(spec.splits[r.split].seeds) * len(methods)
        hours = "unmeasured" if math.isnan(r.cell_seconds_left) else f"{r.cell_seconds_left / 3600:.1f}"
        if r.unmeasured and not math.isnan(r.cell_seconds_left):
            hours += f" ({r.unmeasured} cells by the split's median)"
        reached = ", ".join(f"{name} {n}" for name, n in r.partial.items()) or "-"
        failed = ", ".join(r.diverged) or "-"
        lines.append(f"| {r.split} | {len(spec.splits[r.split].seeds)} | {r.done}/{cells} | {failed} | {reached} "
                     f"| {r.new} | {r.rounds_left} | {hours} |")
    known = [r.cell_seconds_left for r in rows if not math.isnan(r.cell_seconds_left)]
    total = sum(known)
    unknown = [r.split for r in rows if math.isnan(r.cell_seconds_left)]
    where = " on the measured splits" if unknown else ""
    hours = total / 3600
    lines.append(f"left{where}: {hours:.1f} cell hours, about {hours / max(jobs, 1):.1f} h of this machine at {jobs} "
                 f"at a time (if the finished cells ran {jobs} at a time too)"
                 + (f"; not yet measurable: {', '.join(unknown)} (no finished cell)" if unknown else "")
                 + "; on top of that:")
    lines += [f"- {line}" for line in extra_lines(spec, places, methods, rows)]
    by_cpu, timed = sum(r.by_cpu for r in rows), sum(r.done for r in rows)
    lines.append(f"a finished cell's seconds a round: its CPU seconds where it recorded them ({by_cpu} of {timed} "
                 "finished cells), else its wall seconds, which count the load beside it; "
                 f"{sum(r.here for r in rows)} ran wholly on this machine's CPU, and where a method (else its split) "
                 "has such cells, only they measure it")
    cpus = sum((r.cpus for r in rows), Counter())
    ran_on = "; ".join(f"{name or 'not recorded'} ({n})" for name, n in sorted(cpus.items())) or "none yet"
    lines.append(f"the finished cells ran on: {ran_on}; this machine: {cpu_model()}")
    return "\n".join(lines)
