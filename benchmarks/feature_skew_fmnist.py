"""Feature skew on real Fashion-MNIST (docs/FEATURE_SKEW.md): every method on rotation-group splits, with
4 of the 20 clients held out of training, then the page, regenerated from the runs.

    python benchmarks/feature_skew_fmnist.py run              # runs (or resumes) every missing cell, one at a time
    python benchmarks/feature_skew_fmnist.py render           # docs/FEATURE_SKEW.md from what has finished

Splits: ``rotation_iid`` (IID labels, four groups of clients whose images are turned by 0/90/180/270
degrees: the same labels, different inputs) and ``rotation_dirichlet`` (the same groups on top of
Dirichlet(0.3) label skew). A stated fraction of the data and rounds, so the grid fits this project's
2-core machine (the page says so). Methods run at their tuned values (conf/tuned/, docs/TUNING.md).
``render`` copies each finished cell's summary.json and metrics.csv under docs/results/feature_skew/.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from results_fmnist import cell_dir, cell_state  # noqa: E402  (the same cell layout and states)

from pfedla.report import (  # noqa: E402
    SCORES_EXPLAINED,
    alpha_markdown,
    find_jobs,
    group_jobs,
    spread_markdown,
    table_markdown,
    table_rows,
    unseen_markdown,
)

METHODS = ("pfedla", "heurpfedla", "fedavg", "fedbn", "pfedhn", "local")
SEEDS = (0, 1, 2)
SPLITS = {
    "rotation_iid": ["partition=iid"],
    "rotation_dirichlet": ["partition=dirichlet", "partition.alpha=0.3"],
}
FRACTION, ROUNDS, ADAPT_EVERY = 0.25, 30, 10
COMMON = [
    "+experiment=feature_skew", f"dataset.fraction={FRACTION}", f"federation.rounds={ROUNDS}",
    "federation.eval_every=1", f"federation.adapt_every={ADAPT_EVERY}", "logger=csv", "trainer.accelerator=cpu",
    "trainer.devices=1", "trainer.progress_bar=false", "checkpoint.every=5", f"viz.every={ROUNDS}",
]
DOCS = REPO / "docs"
RUNS = DOCS / "results" / "feature_skew"


def cmd_run(args) -> None:
    cells = [(split, m, s) for s in args.seeds for split in args.splits for m in args.methods
             if cell_state(cell_dir(args.out, split, m, s)) != "done"]
    print(f"{len(cells)} cells to run", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "WANDB_MODE": "disabled"}
    for split, method, seed in cells:
        path = cell_dir(args.out, split, method, seed)
        where = f"resume={path}" if cell_state(path) == "partial" else f"hydra.run.dir={path}"
        cmd = [sys.executable, "-m", "pfedla.run", *COMMON, *SPLITS[split], f"algorithm={method}", f"seed={seed}",
               where]
        path.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with open(path / "console.log", "a") as console:
            code = subprocess.call(cmd, cwd=REPO, env=env, stdout=console, stderr=subprocess.STDOUT)
        print(f"{split}/{method}_s{seed}: exit {code} after {time.perf_counter() - started:.0f} s", flush=True)


def cmd_render(args) -> None:
    if args.out.is_dir():
        for summary in args.out.glob("*/*/summary.json"):
            if summary.parent.parent.name in SPLITS and cell_state(summary.parent) == "done":
                target = RUNS / summary.parent.relative_to(args.out)
                target.mkdir(parents=True, exist_ok=True)
                for name in ("summary.json", "metrics.csv"):
                    shutil.copy2(summary.parent / name, target / name)
    lines = [(DOCS / "results" / "feature_skew_intro.md").read_text().rstrip(), "", SCORES_EXPLAINED, ""]
    expected = [(split, m, s) for split in SPLITS for s in SEEDS for m in METHODS]
    missing = [c for c in expected if not (cell_dir(RUNS, *c) / "summary.json").is_file()]
    for split, overrides in SPLITS.items():
        rows = table_rows(group_jobs(find_jobs(RUNS / split))) if (RUNS / split).is_dir() else []
        lines += [f"## {split}: `{' '.join(overrides)}` x 4 rotation groups, {FRACTION:.0%} of Fashion-MNIST, "
                  f"{ROUNDS} rounds", ""]
        if not rows:
            lines += ["No finished runs yet.", ""]
            continue
        lines += [*table_markdown(rows), "", *spread_markdown(rows), "", *unseen_markdown(rows), ""]
        alpha = alpha_markdown(rows)
        if alpha:
            lines += ["What alpha learned (`grp in` / `out`: mean weight on one peer of the client's own rotation "
                      "group / of another group). " + alpha[0], *alpha[1:], ""]
    lines += ["## Cells", "", f"{len(expected) - len(missing)} of {len(expected)} cells finished."]
    if missing:
        lines += ["Not finished (`python benchmarks/feature_skew_fmnist.py run` runs or resumes them): "
                  + ", ".join(f"{split}/{m}_s{s}" for split, m, s in missing) + "."]
    notes = DOCS / "results" / "feature_skew_notes.md"
    if notes.is_file():
        lines += ["", notes.read_text().rstrip()]
    (DOCS / "FEATURE_SKEW.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {DOCS / 'FEATURE_SKEW.md'} ({len(expected) - len(missing)}/{len(expected)} cells)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run or resume every missing cell, one at a time")
    run.add_argument("--out", type=Path, default=REPO / "multirun" / "feature_skew_fmnist")
    run.add_argument("--threads", type=int, default=1)
    run.add_argument("--splits", nargs="+", default=list(SPLITS), choices=list(SPLITS))
    run.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    run.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    render = sub.add_parser("render", help="write docs/FEATURE_SKEW.md from the finished cells")
    render.add_argument("--out", type=Path, default=REPO / "multirun" / "feature_skew_fmnist")
    args = parser.parse_args()
    {"run": cmd_run, "render": cmd_render}[args.command](args)


if __name__ == "__main__":
    main()
