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
    tuning_page: Path | None
    searches: Path  # where the finished searches are: this store's, or (search.reuse) the other benchmark's

    @classmethod
    def of(cls, spec: BenchmarkSpec, root: Path = REPO) -> Places:
        from pfedla.benchmark.spec import load_spec

        store = root / spec.store
        searches = store if spec.search.reuse is None else root / load_spec(spec.search.reuse).store
        tuning = None if spec.tuning_page is None else root / spec.tuning_page
        return cls(root / spec.work, store, root / spec.page, tuning, searches / "search")

    # searches
    def search_dir(self, method: str) -> Path:
        return self.work / "search" / method

    def search_record(self, method: str) -> Path:
        """A finished search: its trials and the chosen values (JSON)."""
        return self.searches / f"{method}.json"

    # runs: a cell is one (split, method, seed) of the final runs, carried on past its rounds, or a proxy check
    def cell(self, cell: Cell) -> Path:
        return self.work / cell.kind / cell.split / cell.name

    def stored(self, cell: Cell) -> Path:
        return self.store / cell.kind / cell.split / cell.name


@dataclass(frozen=True)
class Cell:
    split: str
    method: str
    seed: int
    kind: str = "runs"  # runs (the tables) | extended (run on past the rounds) | proxy_check (another trial's values)
    trial: int | None = None  # proxy_check: the search trial whose values it runs

    @property
    def name(self) -> str:
        return f"{self.method}_s{self.seed}" if self.trial is None else f"{self.method}_t{self.trial}"

    def __str__(self) -> str:
        return f"{self.kind}/{self.split}/{self.name}"
