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
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

import numpy as np  # noqa: E402

from pfedla.benchmark.fmnist_results import cell_dir, cell_state  # noqa: E402  (the same cell layout)
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
from pfedla.viz.heatmaps import plot_all_layers  # noqa: E402

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
    lines += [*alpha_by_layer(), *heatmaps(args.out, args.label_skew_runs)]
    lines += ["## Cells", "", f"{len(expected) - len(missing)} of {len(expected)} cells finished."]
    if missing:
        lines += ["Not finished (`python benchmarks/feature_skew_fmnist.py run` runs or resumes them): "
                  + ", ".join(f"{split}/{m}_s{s}" for split, m, s in missing) + "."]
    notes = DOCS / "results" / "feature_skew_notes.md"
    if notes.is_file():
        lines += ["", notes.read_text().rstrip()]
    (DOCS / "FEATURE_SKEW.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {DOCS / 'FEATURE_SKEW.md'} ({len(expected) - len(missing)}/{len(expected)} cells)")


LABEL_SKEW = DOCS / "results" / "runs"  # the label-skew comparison's cells (benchmarks/results_fmnist.py)


def _alpha_layers(summaries: list[dict]) -> dict[str, dict[str, float]]:
    """Per layer, each alpha statistic averaged over the runs that have it."""
    layers = summaries[0]["alpha_stats"]["layers"]
    return {layer: {k: statistics.fmean(x["alpha_stats"]["layers"][layer][k] for x in summaries)
                    for k in layers[layer] if all(x["alpha_stats"]["layers"][layer][k] is not None for x in summaries)}
            for layer in layers}


def _summaries(folder: Path, method: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob(f"{method}_s*/summary.json"))]


def alpha_by_layer() -> list[str]:
    """pFedLA's alpha per layer: within vs across rotation groups, next to its self-weight on label skew."""
    columns, stats = [], []
    for split in SPLITS:
        runs = _summaries(RUNS / split, "pfedla")
        if runs:
            columns.append(f"{split} (seeds {len(runs)})")
            stats.append(("groups", _alpha_layers(runs)))
    for split in ("pathological2", "dirichlet0.3"):
        runs = _summaries(LABEL_SKEW / split, "pfedla")
        if runs:
            columns.append(f"label skew {split} (seeds {len(runs)})")
            stats.append(("labels", _alpha_layers(runs)))
    if not stats:
        return []
    lines = ["## What pFedLA's alpha keeps within a group, per layer", "",
             "Final-round alpha, averaged over clients and seeds. Rotation splits: self-weight / mean weight on one "
             "peer of the client's own group / on one peer of another group / the total weight kept within the "
             "group (self included). Label-skew splits (docs/RESULTS.md): self-weight / mean weight on one peer "
             "with similar / dissimilar labels.", "",
             "| layer | " + " | ".join(columns) + " |", "| --- |" + " --- |" * len(columns)]
    for layer in stats[0][1]:
        cells = []
        for kind, by_layer in stats:
            s = by_layer.get(layer, {})
            keys = (("self", "same_group_peer", "other_group_peer", "same_group") if kind == "groups"
                    else ("self", "similar_peer", "dissimilar_peer"))
            cells.append(" / ".join(f"{s[k]:.3f}" if k in s else "–" for k in keys))
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    return lines + [""]


def heatmaps(out: Path, label_skew_out: Path) -> list[str]:
    """The seed-0 pFedLA heatmaps, drawn from its alpha.npz with clients by partition id and ordered by group,
    next to a label-skew one, into docs/results/."""
    lines = []
    sources = [(out / split / "pfedla_s0", f"feature_skew_alpha_{split}.png", split) for split in SPLITS]
    sources.append((label_skew_out / "pathological2" / "pfedla_s0", "feature_skew_alpha_label_skew_pathological2.png",
                    "label skew: pathological2 (25%)"))
    for run_dir, name, title in sources:
        if (run_dir / "alpha.npz").is_file() and (run_dir / "summary.json").is_file():
            saved = np.load(run_dir / "alpha.npz")
            summary = json.loads((run_dir / "summary.json").read_text())
            ids = summary.get("clients") or list(range(saved["alpha"].shape[0]))
            partition = json.loads((run_dir / "partition.json").read_text())
            groups = None if partition.get("groups") is None else [partition["groups"][i] for i in ids]
            plot_all_layers(saved["alpha"], [str(x) for x in saved["layers"]], summary["rounds"],
                            DOCS / "results" / name, groups=groups, ids=ids)
        if (DOCS / "results" / name).is_file():
            lines += [f"**{title}**, seed 0, last round:", "", f"![{title}](results/{name})", ""]
    return (["## Heatmaps", ""] + lines) if lines else []


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
    render.add_argument("--label-skew-runs", type=Path, default=REPO / "multirun" / "results_fmnist",
                        help="the comparison grid's output, for a label-skew heatmap")
    args = parser.parse_args()
    {"run": cmd_run, "render": cmd_render}[args.command](args)


if __name__ == "__main__":
    main()
