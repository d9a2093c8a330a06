"""The final runs: one cell per (split, method, seed), each a ``python -m pfedla.run`` at the method's chosen values
with the dataset's own test images as the clients' test splits (``dataset.test_images=held_out``).

A cell with a finished summary.json is skipped, one with a checkpoint resumes from it (exactly), anything else
starts; a cell the store already holds is skipped too, so a grid cut by a machine that went away goes on elsewhere.
Cells go seed by seed (every method of seed 0 first), so a cut grid still compares every method. A finished cell's
summary.json and metrics.csv are copied into the store at once. ``extend`` copies a finished cell whose validation
curve of either score still rises (``still_rising``) into its own folder and resumes it there to ``extend_rounds``:
its first ``rounds`` are exactly the table's run, and the table's cell stays as it is. Where the cell's checkpoint is
not on this machine (another ran it), the extended cell runs the table's run again from round 1 in its own folder,
then on; a log line says if its first ``rounds`` differ from the table's run (``same_start``: another CPU or thread
count can change the last bits).
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pfedla.benchmark.fallback import (
    NotSearched,
    fallback,
    first_cell,
    probe_cell,
    search_record,
    values_for,
)
from pfedla.benchmark.paths import REPO, Cell, Places
from pfedla.benchmark.run_dirs import diverged_run, finished, rounds_of, still_rising
from pfedla.benchmark.spec import BenchmarkSpec


class CellFailed(RuntimeError):
    """A run stopped before its rounds (killed, or an error); its checkpoint lets the step resume it."""


def in_parallel(work, items: list, jobs: int, what: str) -> list:
    """``work(item)`` for every item, ``jobs`` at a time. An error stops the step: items not started are cancelled,
    those running finish, and the first error is raised."""
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        futures = [pool.submit(work, item) for item in items]
        results = []
        try:
            for item, future in zip(items, futures):
                results.append(future.result())
                print(f"{what} {item}: done", flush=True)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return results


def rounds_for(spec: BenchmarkSpec, cell: Cell) -> int:
    return spec.extend_rounds if cell.kind == "extended" else spec.rounds


def final_cells(spec: BenchmarkSpec, places: Places, methods, splits) -> list[Cell]:
    seeds = sorted({s for split in splits for s in spec.splits[split].seeds})
    cells = [Cell(split, method, seed) for seed in seeds for split in splits if seed in spec.splits[split].seeds
             for method in methods]
    return [c for c in cells if not finished(places.stored(c), spec.rounds)]


def extension_cells(spec: BenchmarkSpec, places: Places, methods, splits) -> list[Cell]:
    """Cells in the store at ``rounds`` whose curve still rises, not yet extended to ``extend_rounds``."""
    if not spec.extend_rounds:
        return []
    cells = []
    for split in splits:
        for method in methods:
            for seed in spec.splits[split].seeds:
                stored = places.stored(Cell(split, method, seed))
                extended = Cell(split, method, seed, "extended")
                if (finished(stored, spec.rounds) and still_rising(stored / "metrics.csv", spec.rising)
                        and not finished(places.stored(extended), spec.extend_rounds)):
                    cells.append(extended)
    return cells


def checked_methods(spec: BenchmarkSpec, places: Places) -> list[str]:
    """The methods whose proxy is checked: the yaml's, or the reference and the best other method by score (a) on
    the first split's first seed (an empty list until that split's final runs have it)."""
    if spec.proxy_check.methods:
        return list(spec.proxy_check.methods)
    split = next(iter(spec.splits))
    seed = spec.splits[split].seeds[0]
    scores = {}
    for method in spec.methods:
        summary = places.stored(Cell(split, method, seed)) / "summary.json"
        if summary.is_file() and method != spec.reference:
            scores[method] = json.loads(summary.read_text())["best"]["val/acc_mean"]  # chosen on validation
    return [spec.reference, max(scores, key=scores.get)] if scores else []


def proxy_check_cells(spec: BenchmarkSpec, places: Places, methods) -> list[Cell]:
    """How well the proxy predicts full scale: each method's ``proxy_check.top`` trials by proxy objective, run like a
    final run on the first split, its first seed. The chosen (best) trial is that final run, so it is not run twice."""
    split = next(iter(spec.splits))
    seed = spec.splits[split].seeds[0]
    top = spec.proxy_check.top
    cells = []
    for method in methods:
        record = search_record(places, method)
        done = sorted((t for t in record["trials"] if t["value"] is not None), key=lambda t: (-t["value"], t["number"]))
        for trial in done[:top]:
            if trial["number"] != record["chosen"]["number"]:
                cell = Cell(split, method, seed, "proxy_check", trial["number"])
                if not finished(places.stored(cell), spec.rounds):
                    cells.append(cell)
    return cells


_settling: dict[str, threading.Lock] = {}


def settle_fallback(spec: BenchmarkSpec, places: Places, method: str, threads: int) -> None:
    """Once the method's first cell diverged: run its fallback's proxy-check cells until one does not diverge, move
    the diverged first cell to ``diverged/`` (store and work folder) and put that trial's run in its place. One
    job at a time per method; each step is skipped when done, so a cut one goes on where it stopped."""
    with _settling.setdefault(method, threading.Lock()):
        while (settled := fallback(spec, places, method)) is not None and settled.pending:
            run_cell(spec, places, probe_cell(spec, method, settled.trial), threads)
        if settled is None or settled.trial is None:
            return
        first, moved = first_cell(spec, method), first_cell(spec, method, "diverged")
        probe = probe_cell(spec, method, settled.trial)
        for where in (places.stored, places.cell):
            if where(first).exists() and diverged_run(where(first), spec.rounds):
                if not finished(where(moved), spec.rounds):
                    shutil.rmtree(where(moved), ignore_errors=True)
                    shutil.copytree(where(first), where(moved))
                shutil.rmtree(where(first))
                if where(probe).exists():
                    shutil.copytree(where(probe), where(first))


def cell_command(spec: BenchmarkSpec, places: Places, cell: Cell, rounds: int | None = None) -> list[str]:
    """The cell's ``python -m pfedla.run`` to ``rounds`` (default: the cell's own, ``rounds_for``)."""
    path = places.cell(cell)
    m = spec.methods[cell.method]
    resume = [f"resume={path}"] if (path / "checkpoints" / "last.ckpt").is_file() else []
    return [sys.executable, "-m", "pfedla.run", *spec.common, *spec.splits[cell.split].overrides,
            f"algorithm={m.algorithm}", *m.overrides, *values_for(spec, places, cell), "dataset.test_images=held_out",
            f"seed={cell.seed}", f"federation.rounds={rounds or rounds_for(spec, cell)}", "logger=csv",
            "trainer.devices=1", "trainer.progress_bar=false", f"hydra.run.dir={path}", *resume]


def thread_env(threads: int) -> dict[str, str]:
    """What a cell's process runs with besides the command: its threads, and no W&B."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "WANDB_MODE": "disabled"}


def ready_cells(spec: BenchmarkSpec, places: Places, cells: list[Cell]) -> tuple[list[Cell], list[Cell]]:
    """(the final cells that may start now, those that wait): a method's other cells wait until its first cell,
    whose divergence decides their values, has finished and any fallback it needs is settled."""
    ready, waiting = [], []
    for cell in cells:
        first = first_cell(spec, cell.method)
        settled = fallback(spec, places, cell.method)
        if cell == first or (finished(places.stored(first), spec.rounds) and not (
                settled is not None and (settled.pending or diverged_run(places.stored(first), spec.rounds)))):
            ready.append(cell)
        else:
            waiting.append(cell)
    return ready, waiting


def commands(spec: BenchmarkSpec, places: Places, cells: list[Cell], threads: int) -> list[str]:
    """One shell line per final cell that may start now, to run anywhere the repository and its work folder are
    (a scheduler's array job, GNU parallel); ``run`` afterwards stores what they finished, without running them
    again, and runs whatever is left."""
    ready, waiting = ready_cells(spec, places, cells)
    env = " ".join(f"{k}={v}" for k, v in thread_env(threads).items())
    lines = [f"# {spec.name}: {len(cells)} final cells left, {len(ready)} may start now"
             + (f"; {len(waiting)} wait for their method's first cell (or its fallback), which decides their "
                "values: print the commands again once it has finished" if waiting else "")]
    lines += [f"cd {shlex.quote(str(REPO))} && {env} {shlex.join(cell_command(spec, places, c))}" for c in ready]
    lines.append(f"# then: python -m pfedla.benchmark {spec.name} run (stores the finished runs, runs what is left)")
    return lines


def run_cell(spec: BenchmarkSpec, places: Places, cell: Cell, threads: int) -> str:
    """Runs (or resumes) ``cell`` to its rounds and stores it. An extended cell runs in two stages, each to its own
    ``federation.rounds``: the table's run (copied with its checkpoint when this machine has it, else run again from
    round 1: its last round then evaluates as the table's did), then on to ``extend_rounds``."""
    if cell.kind in ("runs", "extended"):
        settle_fallback(spec, places, cell.method, threads)  # before any other cell of a method whose first diverged
        if cell.kind == "runs" and finished(places.stored(cell), spec.rounds):
            return str(cell)  # the first cell: the fallback trial's run took its place
    path, rounds = places.cell(cell), rounds_for(spec, cell)
    if cell.kind == "extended" and not path.exists():  # the table's run, checkpoint included, carried on apart
        source = places.cell(Cell(cell.split, cell.method, cell.seed))
        if (source / "checkpoints" / "last.ckpt").is_file():
            shutil.copytree(source, path)
        else:  # its checkpoint stayed on the machine that ran it
            print(f"{cell}: no checkpoint of {source.name} on this machine; its first {spec.rounds} rounds run again",
                  flush=True)
    stages = [spec.rounds, rounds] if cell.kind == "extended" else [rounds]
    for stage in stages:
        if finished(path, rounds) or (stage < rounds and rounds_of(path)[0] >= stage):
            continue  # this stage is behind the run
        path.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **thread_env(threads)}
        started = time.perf_counter()
        with open(path / "console.log", "a") as console:
            code = subprocess.call(cell_command(spec, places, cell, stage), cwd=REPO, env=env, stdout=console,
                                   stderr=subprocess.STDOUT)
        print(f"{cell}: exit {code} after {time.perf_counter() - started:.0f} s", flush=True)
        if not finished(path, stage):
            raise CellFailed(f"{cell} stopped with exit {code} before {stage} rounds (see {path / 'console.log'}); "
                             "run the step again to resume it")
    if cell.kind == "extended":
        same_start(path, places.stored(Cell(cell.split, cell.method, cell.seed)), spec.rounds)
    if finished(path, rounds):
        target = places.stored(cell)
        target.mkdir(parents=True, exist_ok=True)
        for name in ("summary.json", "metrics.csv"):
            shutil.copy2(path / name, target / name)
    if cell == first_cell(spec, cell.method):
        settle_fallback(spec, places, cell.method, threads)  # it diverged: find the method's values now
    return str(cell)


def same_start(extended: Path, stored: Path, rounds: int) -> bool:
    """Whether an extended run's first ``rounds`` rows of metrics.csv are the table's run's; says so when not."""
    def head(path: Path) -> list[dict]:
        with open(path / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        return [row for row in rows if int(row["round"]) <= rounds]

    same = head(extended) == head(stored)
    if not same:
        print(f"{extended}: its first {rounds} rounds differ from the table's run {stored}", flush=True)
    return same


def run_cells(spec: BenchmarkSpec, places: Places, cells: list[Cell], jobs: int, threads: int) -> None:
    """The cells, ``jobs`` at a time; first, each method of theirs whose first cell diverged and whose fallback is
    not settled yet settles it (its proxy-check cells run in one job while the other jobs run cells).

    A method's first cell decides the values of its other final cells (its fallback's, should it diverge), so it
    runs before them: first cells go first, and another final cell of the method starts only once its first cell
    has finished. A final cell whose first cell is neither finished nor among ``cells`` is refused (NotSearched)."""
    methods = sorted({c.method for c in cells})
    for method in methods:
        search_record(places, method)  # every search finished, before any cell starts
    firsts = {m: first_cell(spec, m) for m in methods}
    for cell in cells:
        first = firsts[cell.method]
        if cell.kind == "runs" and first not in cells and not finished(places.stored(first), spec.rounds):
            raise NotSearched(f"{cell} runs at values its method's first cell decides ({first}: the fallback's, "
                              "should it diverge), which has not run: run it first, e.g. --splits "
                              f"{first.split} --methods {cell.method}")
    cells = sorted(cells, key=lambda c: c != firsts[c.method])  # stable: the first cells, then the rest in order
    ended = {firsts[m]: threading.Event() for m in methods if firsts[m] in cells}
    unsettled = [m for m in methods if (f := fallback(spec, places, m)) is not None and (f.pending or diverged_run(
        places.stored(first_cell(spec, m)), spec.rounds))]
    print(f"{len(cells)} cells to run, {jobs} at a time" + (f"; first the fallback of {', '.join(unsettled)}"
                                                           if unsettled else ""), flush=True)

    def work(item):
        if isinstance(item, str):
            return settle_fallback(spec, places, item, threads)
        first = firsts[item.method]
        if item in ended:
            try:
                return run_cell(spec, places, item, threads)
            finally:
                ended[item].set()
        if item.kind == "runs" and first in ended:
            ended[first].wait()
            if not finished(places.stored(first), spec.rounds):
                raise CellFailed(f"{item} waits on its method's first cell, {first}, which stopped")
        return run_cell(spec, places, item, threads)

    in_parallel(work, [*unsettled, *cells], jobs, "cell")
