"""The final runs: one cell per (split, method, seed), each a ``python -m pfedla.run`` at the method's chosen values
with the dataset's own test images as the clients' test splits (``dataset.test_images=held_out``).

A cell with a finished summary.json is skipped, one with a checkpoint resumes from it (exactly), anything else
starts; a cell the store already holds is skipped too, so a grid cut by a machine that went away goes on elsewhere.
Cells go seed by seed (every method of seed 0 first), so a cut grid still compares every method. A finished cell's
summary.json and metrics.csv are copied into the store at once. ``extend`` copies a finished cell whose validation
curve still rises (pfedla.stats.late_slope) into its own folder and resumes it there to ``extend_rounds``: its
first ``rounds`` are exactly the table's run, and the table's cell stays as it is.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pfedla.benchmark.paths import REPO, Places
from pfedla.benchmark.search import chosen_overrides
from pfedla.benchmark.spec import BenchmarkSpec
from pfedla.stats import WINDOW, curve, late_slope


class NotSearched(RuntimeError):
    """A final run needs its method's finished search."""


def in_parallel(work, items: list, jobs: int, what: str) -> list:
    """``work(item)`` for every item, ``jobs`` at a time; the first error stops the step after the others end."""
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        futures = [pool.submit(work, item) for item in items]
        results = []
        for item, future in zip(items, futures):
            results.append(future.result())
            print(f"{what} {item}: done", flush=True)
    return results


def chosen(places: Places, method: str) -> list[str]:
    record = places.search_record(method)
    if not record.is_file():
        raise NotSearched(f"method {method} has no finished search ({record}); run the step `search` first")
    return chosen_overrides(json.loads(record.read_text()))


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


def final_cells(spec: BenchmarkSpec, places: Places, methods, splits) -> list[tuple[str, str, int]]:
    seeds = sorted({s for split in splits for s in spec.splits[split].seeds})
    return [(split, method, seed) for seed in seeds for split in splits if seed in spec.splits[split].seeds
            for method in methods if not finished(places.stored_cell(split, method, seed), spec.rounds)]


def still_rising(metrics: Path, rising: float) -> bool:
    """Whether a run's score-(a) validation curve still climbs at its end (slope over its last WINDOW rounds)."""
    with open(metrics) as f:
        slope = late_slope(curve(list(csv.DictReader(f)), "val/acc_mean"), WINDOW)
    return slope is not None and round(slope, 2) > rising


def extension_cells(spec: BenchmarkSpec, places: Places, methods, splits) -> list[tuple[str, str, int]]:
    """Cells in the store at ``rounds`` whose curve still rises, not yet extended to ``extend_rounds``."""
    if not spec.extend_rounds:
        return []
    cells = []
    for split in splits:
        for method in methods:
            for seed in spec.splits[split].seeds:
                stored = places.stored_cell(split, method, seed)
                if (finished(stored, spec.rounds) and still_rising(stored / "metrics.csv", spec.rising)
                        and not finished(places.stored_cell(split, method, seed, True), spec.extend_rounds)):
                    cells.append((split, method, seed))
    return cells


def cell_command(spec: BenchmarkSpec, places: Places, split: str, method: str, seed: int, extended: bool) -> list[str]:
    path = places.cell(split, method, seed, extended)
    m = spec.methods[method]
    rounds = spec.extend_rounds if extended else spec.rounds
    resume = [f"resume={path}"] if (path / "checkpoints" / "last.ckpt").is_file() else []
    return [sys.executable, "-m", "pfedla.run", *spec.common, *spec.splits[split].overrides,
            f"algorithm={m.algorithm}", *m.overrides, *chosen(places, method), "dataset.test_images=held_out",
            f"seed={seed}", f"federation.rounds={rounds}", "logger=csv", "trainer.devices=1",
            "trainer.progress_bar=false", f"hydra.run.dir={path}", *resume]


def run_cell(spec: BenchmarkSpec, places: Places, cell: tuple[str, str, int], threads: int, extended: bool) -> str:
    split, method, seed = cell
    path = places.cell(split, method, seed, extended)
    rounds = spec.extend_rounds if extended else spec.rounds
    if extended and not path.exists():  # the table's run, checkpoint included, carried on in its own folder
        source = places.cell(split, method, seed)
        if not (source / "checkpoints" / "last.ckpt").is_file():
            raise NotSearched(f"{source}: no checkpoint to extend on this machine; run the step `run` for it")
        shutil.copytree(source, path)
    if not finished(path, rounds):
        path.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "WANDB_MODE": "disabled"}
        started = time.perf_counter()
        with open(path / "console.log", "a") as console:
            code = subprocess.call(cell_command(spec, places, split, method, seed, extended), cwd=REPO, env=env,
                                   stdout=console, stderr=subprocess.STDOUT)
        print(f"{split}/{method}_s{seed}: exit {code} after {time.perf_counter() - started:.0f} s", flush=True)
    if finished(path, rounds):
        target = places.stored_cell(split, method, seed, extended)
        target.mkdir(parents=True, exist_ok=True)
        for name in ("summary.json", "metrics.csv"):
            shutil.copy2(path / name, target / name)
    return f"{split}/{method}_s{seed}"


def run_cells(spec: BenchmarkSpec, places: Places, cells: list, jobs: int, threads: int, extended: bool = False
              ) -> None:
    for method in sorted({m for _, m, _ in cells}):
        chosen(places, method)  # every search finished, before any cell starts
    print(f"{len(cells)} {'extension ' if extended else ''}cells to run, {jobs} at a time", flush=True)
    in_parallel(lambda cell: run_cell(spec, places, cell, threads, extended), cells, jobs, "cell")
