"""The comparison in docs/RESULTS.md: every method x three label-skew splits x three seeds on real
Fashion-MNIST, then the page itself, regenerated from the runs.

    python benchmarks/results_fmnist.py run --workers 2            # runs (or resumes) every missing cell
    python benchmarks/results_fmnist.py render                     # docs/RESULTS.md from what has finished

``run`` is resumable: a cell with a complete summary.json is skipped, a cell with a checkpoint resumes
from it (exactly), anything else starts; a cell the repository already holds at the protocol's rounds
(docs/results/runs or docs/results/pending) is skipped too, so a grid cut by a machine that went away
goes on elsewhere, losing only its unfinished cells. Cells go seed by seed (all splits and methods of seed
0 first), so a cut grid still compares every method. Every method runs at its tuned values (conf/tuned/,
chosen on validation by ``hparams_search``; docs/TUNING.md). ``render`` copies each finished cell's
summary.json and metrics.csv into the repository: under docs/results/pending/ until every cell of its
split has finished, then all of that split's cells together under docs/results/runs/, which the tables
are made of, so a split's table never mixes rounds and the page can be rebuilt from the repository alone
(``render --runs docs/results/runs``). It lists every cell that is missing, waiting or short of rounds.

    python benchmarks/results_fmnist.py extend --rounds 200 --splits pathological2 --methods fedbn

``extend`` runs on past the protocol's rounds the cells whose curves still rise at its end: it copies each
finished cell (checkpoint included) into its own output folder and resumes it there to ``--rounds`` (exact:
rounds 1-100 are the tables' run). ``render`` keeps them apart from the tables, under docs/results/extended/,
and writes under each split what the extra rounds changed, both scores chosen by validation as everywhere.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pfedla.benchmark.fmnist_verdicts import (
    WINDOW,
    WINDOW_ADAPTED,
    _against,
    _paired,
    _verdict,
    best_by_validation,
    curve,
    late_slope,
    rising_markdown,
)
from pfedla.benchmark.run_dirs import rounds_of as _rounds  # a run dir's rounds by summary and curve
from pfedla.report import (
    SCORES_EXPLAINED,
    alpha_markdown,
    find_jobs,
    group_jobs,
    plot_curves,
    spread_markdown,
    table_markdown,
    table_rows,
)
from pfedla.timing import run_wall

REPO = Path(__file__).resolve().parents[2]
METHODS = ("pfedla", "heurpfedla", "fedavg", "fedbn", "pfedhn", "local")
SEEDS = (0, 1, 2)
# split -> (overrides, dataset fraction). The headline split uses all of Fashion-MNIST; the other two a
# seeded stratified quarter (the whole grid does not fit a 2-core machine's day; docs/RESULTS.md says so).
SPLITS = {
    "dirichlet0.3": (["partition=dirichlet", "partition.alpha=0.3"], 1.0),
    "pathological2": (["partition=pathological", "partition.classes_per_client=2"], 0.25),
    "dirichlet0.1": (["partition=dirichlet", "partition.alpha=0.1"], 0.25),
}
# The protocol's rounds per cell: at 50 some baselines' validation curves still rose (docs/RESULTS.md). Heatmaps
# every 50 rounds, whatever the rounds (the report ignores viz.*; fixed so cells of any length share it).
ROUNDS, ADAPT_EVERY, VIZ_EVERY = 100, 10, 50
COMMON = [
    "dataset=fmnist", "model=cnn_bn", "federation.num_clients=20", "federation.participation=1.0",
    "federation.eval_every=1", f"federation.adapt_every={ADAPT_EVERY}",
    "logger=csv", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.progress_bar=false", "checkpoint.every=5",
    f"viz.every={VIZ_EVERY}",
]
DOCS = REPO / "docs"
RUNS, PENDING = DOCS / "results" / "runs", DOCS / "results" / "pending"  # the tables' runs; finished cells waiting
EXTENDED = DOCS / "results" / "extended"  # cells run past ROUNDS: beside the tables, never in them
EXTENDED_OUT = REPO / "multirun" / "results_fmnist_extended"


def cell_dir(out: Path, split: str, method: str, seed: int) -> Path:
    return out / split / f"{method}_s{seed}"


def cell_state(path: Path, rounds: int = ROUNDS) -> str:
    """done (a summary of at least ``rounds`` rounds) | partial (a checkpoint to resume, or to extend to more
    rounds) | new."""
    summary = path / "summary.json"
    if summary.is_file() and '"stopped_by_signal"' not in (text := summary.read_text()):
        if json.loads(text).get("rounds", 0) >= rounds:
            return "done"
    return "partial" if (path / "checkpoints" / "last.ckpt").is_file() else "new"


def run_cell(out: Path, split: str, method: str, seed: int, threads: int,
             rounds: int = ROUNDS) -> tuple[str, float, int]:
    path = cell_dir(out, split, method, seed)
    overrides, fraction = SPLITS[split]
    args = [*COMMON, *overrides, f"dataset.fraction={fraction}", f"algorithm={method}", f"seed={seed}",
            f"federation.rounds={rounds}"]
    args.append(f"resume={path}" if cell_state(path, rounds) == "partial" else f"hydra.run.dir={path}")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "WANDB_MODE": "disabled"}
    started = time.perf_counter()
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "console.log", "a") as console:
        code = subprocess.call([sys.executable, "-m", "pfedla.run", *args], cwd=REPO, env=env,
                               stdout=console, stderr=subprocess.STDOUT)
    return f"{split}/{method}_s{seed}", time.perf_counter() - started, code


def recorded(split: str, method: str, seed: int, rounds: int, places=None) -> bool:
    """Whether the repository already holds this cell at ``rounds`` or more in ``places`` (the grid's: docs/results/
    runs and pending/; extended cells: docs/results/extended/): a new machine then skips it, though its run dir,
    on the machine that ran it, is gone."""
    places = (RUNS, PENDING) if places is None else places
    return any(_rounds(cell_dir(where, split, method, seed))[0] >= rounds for where in places)


def cells_to_run(out: Path, splits, methods, seeds, rounds: int, places=None) -> list[tuple[str, str, int]]:
    return [(split, method, seed) for seed in seeds for split in splits for method in methods
            if cell_state(cell_dir(out, split, method, seed), rounds) != "done"
            and not recorded(split, method, seed, rounds, places)]


def cmd_extend(args) -> None:
    """Copy each named cell, finished at the protocol's rounds, from the grid's output into ``--extended-out``
    (once), then run those copies on to ``--rounds`` there; the grid's own cells stay as they are."""
    if args.rounds <= ROUNDS:
        raise SystemExit(f"--rounds {args.rounds}: extend runs cells past the protocol's {ROUNDS} rounds; pass more")
    for split in args.splits:
        for method in args.methods:
            for seed in args.seeds:
                source = cell_dir(args.out, split, method, seed)
                target = cell_dir(args.extended_out, split, method, seed)
                if target.exists():
                    continue
                if not _finished(source, ROUNDS) or not (source / "checkpoints" / "last.ckpt").is_file():
                    raise SystemExit(f"{source}: no finished {ROUNDS}-round cell with a checkpoint to extend; "
                                     "run it first with `run`")
                shutil.copytree(source, target)
    args.out = args.extended_out
    cmd_run(args, places=(EXTENDED,))


def cmd_run(args, places=None) -> None:
    cells = cells_to_run(args.out, args.splits, args.methods, args.seeds, args.rounds, places)
    print(f"{len(cells)} cells to run with {args.workers} workers", flush=True)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    with ThreadPoolExecutor(args.workers) as pool:
        for name, seconds, code in pool.map(lambda c: run_cell(args.out, *c, threads, args.rounds), cells):
            print(f"{name}: exit {code} after {seconds:.0f} s", flush=True)


def _finished(path: Path, rounds: int) -> bool:
    """A run dir that finished at least ``rounds`` rounds, its summary.json and metrics.csv describing the same
    rounds (a cell being extended has the old, shorter summary beside a longer metrics.csv)."""
    said, logged = _rounds(path)
    return said >= rounds and said == logged and cell_state(path, rounds) == "done"


def _copy_cell(source: Path, target: Path) -> None:
    """What the repository keeps of a run dir: its summary.json and metrics.csv."""
    target.mkdir(parents=True, exist_ok=True)
    for name in ("summary.json", "metrics.csv"):
        shutil.copy2(source / name, target / name)


def _copy_finished(out: Path, runs: Path, pending: Path) -> None:
    """The grid's cells that finished the protocol's rounds, into the repository. A split's cells replace its
    tables (``runs``) together, once all of its cells have finished; until then the finished ones wait in
    ``pending`` (committed, so a grid on a new machine skips them, and the page lists them), and the tables
    keep the runs they had."""
    cells = [f"{m}_s{s}" for s in SEEDS for m in METHODS]
    for split in SPLITS:
        for cell in cells:
            if _finished(out / split / cell, ROUNDS) and not _finished(pending / split / cell, ROUNDS):
                _copy_cell(out / split / cell, pending / split / cell)
        if all(_finished(pending / split / cell, ROUNDS) for cell in cells):
            for cell in cells:
                _copy_cell(pending / split / cell, runs / split / cell)
            shutil.rmtree(pending / split)


def _copy_extended(out: Path, extended: Path) -> None:
    """Extended cells that finished more than the protocol's rounds, into the repository (a longer run replaces
    a shorter one)."""
    for split in SPLITS:
        if not (out / split).is_dir():
            continue
        for source in sorted((out / split).iterdir()):
            said = _rounds(source)[0]
            if said > ROUNDS and _finished(source, said) and said > _rounds(extended / split / source.name)[0]:
                _copy_cell(source, extended / split / source.name)


def _extended_cells(split_dir: Path) -> dict[str, dict[int, list[dict]]]:
    """method -> seed -> metrics.csv rows of the extended cells of one split."""
    cells: dict[str, dict[int, list[dict]]] = {}
    for path in sorted(split_dir.iterdir()):
        method, _, seed = path.name.rpartition("_s")
        if method in METHODS and seed.isdigit() and (path / "metrics.csv").is_file():
            with open(path / "metrics.csv") as f:
                cells.setdefault(method, {})[int(seed)] = list(csv.DictReader(f))
    return cells


def _pct(values: list[float]) -> str:
    spread = f" ± {100 * statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{100 * statistics.fmean(values):.2f}{spread}"


def extension_markdown(split_dir: Path, rows: list[dict]) -> list[str]:
    """What running on past the protocol's rounds changed, per extended method of one split: each score at the
    best validation round of rounds 1-ROUNDS (the tables' value) and of all its rounds, the slope at the end,
    and pFedLA's table value (ROUNDS rounds) against the method's extended value, seed by seed."""
    cells = _extended_cells(split_dir)
    if not cells:
        return []
    pfedla = next((r for r in rows if r["label"] == "pfedla"), None)
    lines = [f"Beyond {ROUNDS} rounds: the cells below ran on from their checkpoints (rounds 1-{ROUNDS} are the "
             "table's runs, which stay as they are); best round chosen by validation, slope as above, at the end.", "",
             f"| method | seeds | rounds | (a) at {ROUNDS} | (a) at end | best rounds | slope (a) | (b) at {ROUNDS} "
             "| (b) at end | slope (b) |", "|---|---|---|---|---|---|---|---|---|---|"]
    pairs = []
    for method, seeds in cells.items():
        ends = sorted({int(rs[-1]["round"]) for rs in seeds.values()})
        columns = []
        for prefix, key, window in (("", "best", WINDOW), ("adapted_", "best_adapted", WINDOW_ADAPTED)):
            protocol = [best_by_validation(rs, prefix, ROUNDS) for rs in seeds.values()]
            end = {s: best_by_validation(rs, prefix) for s, rs in seeds.items()}
            if None in protocol or None in end.values():  # Local has no score (b)
                columns += ["—"] * (4 if key == "best" else 3)
                continue
            slopes = [late_slope(curve(rs, f"val/{prefix}acc_mean"), window) for rs in seeds.values()]
            columns += [_pct([t for _, t in protocol]), _pct([t for _, t in end.values()])]
            if key == "best":
                columns.append(", ".join(str(r) for r, _ in end.values()))
            columns.append("—" if None in slopes else f"{statistics.fmean(slopes):+.2f}")
            if pfedla is not None and method != "pfedla":
                extended = {"label": method, "by_seed": {key: {s: t for s, (_, t) in end.items()}}}
                paired = _paired(pfedla, extended, key)
                if paired:
                    pairs.append(f"- {'(a)' if key == 'best' else '(b)'}: pFedLA at {ROUNDS} rounds minus {method} at "
                                 f"{ends[-1]}.{paired}")
        rounds = "-".join(map(str, (ends[0], ends[-1]) if len(ends) > 1 else ends))
        lines.append(f"| {method} | {len(seeds)} | {rounds} | " + " | ".join(columns) + " |")
    return [*lines, "", *pairs] if pairs else lines


def cmd_render(args) -> None:
    runs = args.runs
    if args.out.is_dir() and runs == RUNS:
        _copy_finished(args.out, runs, PENDING)
    if args.extended_out.is_dir() and runs == RUNS:
        _copy_extended(args.extended_out, EXTENDED)
    lines = [(DOCS / "results" / "results_intro.md").read_text().rstrip(), "", SCORES_EXPLAINED, ""]
    expected = [(split, m, s) for split in SPLITS for s in SEEDS for m in METHODS]
    rounds_of = {c: _rounds(cell_dir(runs, *c))[0] for c in expected}
    waiting = {c for c in expected if rounds_of[c] < ROUNDS and _finished(cell_dir(PENDING, *c), ROUNDS)}
    missing = [c for c in expected if rounds_of[c] < ROUNDS]
    total = 0.0
    for split, (overrides, fraction) in SPLITS.items():
        jobs = find_jobs(runs / split) if (runs / split).is_dir() else []
        groups = group_jobs(jobs)
        rows = table_rows(groups)
        total += sum(w for j in jobs if j.summary and not math.isnan(w := run_wall(j.summary)[0]))
        counts = sorted({j.summary["rounds"] for j in jobs if j.summary and j.summary.get("final")})
        mixed = " (mixed: each group says which)" if len(counts) > 1 else ""
        rounds = " and ".join(map(str, counts)) + " rounds" + mixed if counts else "no finished runs"
        lines += [f"## {split}: `{' '.join(overrides)}`, {fraction:.0%} of Fashion-MNIST, {rounds}", ""]
        if not rows:
            lines += ["No finished runs yet.", ""]
            continue
        spread = spread_markdown(rows)
        lines += [*table_markdown(rows), "", *spread, ""]
        lines += [*rising_markdown(groups), "", *rising_markdown(groups, "val/adapted_acc_mean", "(b)"), ""]
        alpha = alpha_markdown(rows)
        if alpha:
            lines += ["What alpha learned. " + alpha[0], *alpha[1:], ""]
        lines += ["Verdict (computed from the table):",
                  _verdict(rows, "best", "(a) at best validation"),
                  _verdict(rows, "best_adapted", "(b) at best validation"),
                  _against(rows, "local", "best", "(a) against Local (no collaboration)"),
                  _against(rows, "fedavg", "best_adapted", "(b) against FedAvg (its global model fine-tuned)"), ""]
        if (EXTENDED / split).is_dir():
            lines += [*extension_markdown(EXTENDED / split, rows), ""]
        figure = DOCS / "results" / f"curves_{split}.png"
        plot_curves(groups, figure)
        lines += [f"![{split} curves](results/{figure.name})", ""]
    done = len(expected) - len(missing) + len(waiting)
    lines += ["## Cells of the grid", "",
              f"{done} of {len(expected)} cells finished at the protocol's {ROUNDS} rounds "
              f"({total / 3600:.1f} h of run time in all, for the runs in the tables)."]
    if missing:
        lines += [f"Short of {ROUNDS} rounds (`python benchmarks/results_fmnist.py run` runs what is missing, resuming "
                  "from a checkpoint where its machine left one); a split's tables change only when all of its "
                  f"cells have {ROUNDS} rounds, so until then they show the rounds named in their heading:", ""]
        for split in SPLITS:
            by_state: dict[str, list[str]] = {}
            for s_, m, s in missing:
                if s_ == split:
                    had = rounds_of[split, m, s]
                    state = ("finished, waiting in docs/results/pending/" if (split, m, s) in waiting else
                             "not run" if had == 0 else f"in the tables at {had} rounds")
                    by_state.setdefault(state, []).append(f"{m}_s{s}")
            parts = [f"{state}: " + (f"all {len(cells)} cells" if len(cells) == len(METHODS) * len(SEEDS)
                                     else ", ".join(cells)) for state, cells in by_state.items()]
            if parts:
                lines.append(f"- {split}: " + "; ".join(parts))
    notes = DOCS / "results" / "results_notes.md"
    if notes.is_file():
        lines += ["", notes.read_text().rstrip()]
    (DOCS / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {DOCS / 'RESULTS.md'} ({done}/{len(expected)} cells at {ROUNDS} rounds)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run or resume every missing cell")
    extend = sub.add_parser("extend", help="run finished cells on past the protocol's rounds, in their own folder")
    for command in (run, extend):
        command.add_argument("--out", type=Path, default=REPO / "multirun" / "results_fmnist")
        command.add_argument("--workers", type=int, default=2, help="cells at once (each gets cores / workers threads)")
        command.add_argument("--threads", type=int, default=0,
                             help="threads per cell (0: cores / workers); less when something else shares the machine")
        command.add_argument("--splits", nargs="+", default=list(SPLITS), choices=list(SPLITS))
        command.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
        command.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
        command.add_argument("--rounds", type=int, default=ROUNDS,
                             help="rounds per cell; more than a finished cell has extends it from its checkpoint")
    extend.add_argument("--extended-out", type=Path, default=EXTENDED_OUT)
    render = sub.add_parser("render", help="write docs/RESULTS.md from the finished cells")
    render.add_argument("--out", type=Path, default=REPO / "multirun" / "results_fmnist")
    render.add_argument("--extended-out", type=Path, default=EXTENDED_OUT,
                        help="extended cells, copied into docs/results/extended/ when finished")
    render.add_argument("--runs", type=Path, default=RUNS,
                        help="where finished cells are read from (copied there from --out first)")
    args = parser.parse_args()
    {"run": cmd_run, "extend": cmd_extend, "render": cmd_render}[args.command](args)


if __name__ == "__main__":
    main()
