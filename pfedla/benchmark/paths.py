"""Where a benchmark keeps things: ``work`` (run dirs, checkpoints, studies; never committed) and ``store`` (what
its pages are rebuilt from, committed): the chosen values and trials of every search, every finished run's
summary.json and metrics.csv."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pfedla.benchmark.spec import BenchmarkSpec

REPO = Path(__file__).resolve().parent.parent.parent


@dataclass(frozen=True)
class Places:
    work: Path
    store: Path
    page: Path
    tuning_page: Path

    @classmethod
    def of(cls, spec: BenchmarkSpec, root: Path = REPO) -> Places:
        return cls(root / spec.work, root / spec.store, root / spec.page, root / spec.tuning_page)

    # searches
    def search_dir(self, method: str) -> Path:
        return self.work / "search" / method

    def search_record(self, method: str) -> Path:
        """A finished search: its trials and the chosen values (JSON)."""
        return self.store / "search" / f"{method}.json"

    # final runs: a cell is one (split, method, seed)
    def cell(self, split: str, method: str, seed: int, extended: bool = False) -> Path:
        return self.work / ("extended" if extended else "runs") / split / f"{method}_s{seed}"

    def stored_cell(self, split: str, method: str, seed: int, extended: bool = False) -> Path:
        return self.store / ("extended" if extended else "runs") / split / f"{method}_s{seed}"
