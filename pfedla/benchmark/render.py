"""A benchmark's two pages, rebuilt from its store alone (so anyone can rebuild them from a clone): the results page
(per split: the table, the spread over clients, alpha, flatness, curves; then the verdicts of the reference method
against every other, Holm-corrected over the page's whole family), here, and the tuning page
(pfedla/benchmark/tuning_page.py)."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

from pfedla.benchmark.fallback import chosen_run, fallback, first_cell, probe_cell
from pfedla.benchmark.paths import REPO, Cell, Places
from pfedla.benchmark.reductions import reduction_lines
from pfedla.benchmark.run_dirs import diverged, diverged_run
from pfedla.benchmark.spec import BenchmarkSpec, budget
from pfedla.benchmark.tuning_page import tuning_page
from pfedla.benchmark.verdicts import ablation_lines, comparisons, detectable_line, verdict_table
from pfedla.report import (
    ROUND_SECONDS_EXPLAINED,
    SCORES_EXPLAINED,
    Job,
    alpha_markdown,
    find_jobs,
    plot_curves,
    spread_markdown,
    table_markdown,
    table_rows,
    unseen_markdown,
)
from pfedla.stats import SCORE_CURVES, WINDOW, WINDOW_ADAPTED, curve, late_slope
from pfedla.timing import round_seconds


def stored_groups(spec: BenchmarkSpec, places: Places, split: str, extended: bool = False) -> dict[str, list[Job]]:
    """method -> its finished cells of one split in the store (the yaml's method order)."""
    folder = places.store / ("extended" if extended else "runs") / split
    jobs = {job.path.name: job for job in (find_jobs(folder) if folder.is_dir() else []) if job.summary}
    return {method: [jobs[f"{method}_s{s}"] for s in spec.splits[split].seeds if f"{method}_s{s}" in jobs]
            for method in spec.methods if any(f"{method}_s{s}" in jobs for s in spec.splits[split].seeds)}


def protocol_markdown(spec: BenchmarkSpec, places: Places) -> list[str]:
    trials = sorted({budget(spec, m) for m in spec.methods})
    if spec.search.reuse is not None:
        searched = (f"- every method runs at the values chosen by benchmark `{spec.search.reuse}`'s searches "
                    f"(conf/benchmark/{spec.search.reuse}.yaml: equal budgets on its proxy), not searched on these "
                    "splits;")
    elif places.tuning_page is None:
        searched = "- every method searched with the same budget; the trials are in the store;"
    else:
        searched = (f"- every method searched with the same budget ({', '.join(map(str, trials))} trials of seeded "
                    f"{spec.search.sampler.upper()}, sampler seed {spec.search.seed}) on the same proxy "
                    f"(`{' '.join(spec.search.proxy)}`), over its own knobs; the chosen values and every trial: "
                    f"[{places.tuning_page.name}]({_link(places.tuning_page, places.page)});")
    return [
        "**Protocol** (`python -m pfedla.benchmark " + spec.name + "`, conf/benchmark/" + spec.name + ".yaml):",
        searched,
        "- no search trial ever read a test image: trials load only the dataset's train images "
        "(`dataset.test_images=unused`), and the final runs test every client on the dataset's own test images "
        "alone, dealt by its label distribution (`dataset.test_images=held_out`; checked image by image, "
        "tests/test_held_out_test_set.py);",
        f"- {spec.rounds} rounds per run; every score taken at the round of best *validation* accuracy; runs where "
        f"either score's validation curve still rose at the end (least-squares slope > {spec.rising} points per 10 "
        f"rounds over the last {WINDOW} rounds for (a), the last {WINDOW_ADAPTED} for (b)) ran on to "
        f"{spec.extend_rounds} rounds, shown beside the tables, never in them;"
        if spec.extend_rounds else f"- {spec.rounds} rounds per run; every score at the best-validation round;",
        f"- verdicts: {spec.reference} minus each other method, paired by seed (a seed fixes the partition both ran "
        f"on), two-sided paired t-test, Holm-corrected over the family of every such comparison on this page "
        f"(all splits, both scores) at family-wise error {spec.alpha:g}; effects in points with 95% intervals.",
    ]


def collapse_figure(groups: dict[str, list[Job]], path: Path) -> bool:
    """Per method with learned alpha: the share of clients whose alpha gives their peers nothing, per layer, over
    rounds (metrics.csv ``alpha/collapsed_*``, mean over seeds). False when no method has those columns."""
    import matplotlib.pyplot as plt  # pfedla.report has chosen the Agg backend

    curves = {}
    for method, jobs in groups.items():
        rows = [_rows(j) for j in jobs]
        layers = [k for k in (rows[0][0] if rows and rows[0] else {}) if k.startswith("alpha/collapsed_")]
        learned = jobs[0].config.get("algorithm.alpha", "learned") == "learned"
        if layers and learned:
            curves[method] = {k[len("alpha/collapsed_"):]: _mean_curve([curve(r, k) for r in rows]) for k in layers}
    if not curves:
        return False
    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 3.8), squeeze=False)
    for ax, (method, layers) in zip(axes[0], curves.items()):
        for layer, points in layers.items():
            ax.plot(list(points), [100 * v for v in points.values()], label=layer)
        ax.set_title(f"{method}: clients whose peers get nothing")
        ax.set_xlabel("round")
        ax.set_ylabel("share of clients (%)")
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title="layer")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _mean_curve(curves: list[dict[int, float]]) -> dict[int, float]:
    rounds = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    return {r: sum(c[r] for c in curves) / len(curves) for r in rounds}


def flatness_line(groups: dict[str, list[Job]], key: str, window: int, rising: float) -> str:
    slopes = {}
    for method, jobs in groups.items():
        found = [s for s in (late_slope(curve(_rows(j), key), window) for j in jobs) if s is not None]
        if found:
            slopes[method] = sum(found) / len(found)
    if not slopes:
        return ""
    up = [m for m, s in slopes.items() if round(s, 2) > rising]
    score = "(b)" if "adapted" in key else "(a)"
    return (f"Flatness of validation {score}: least-squares slope over the last {window} rounds, points per 10 rounds, "
            "mean over seeds: " + ", ".join(f"{m} {s:+.2f}" for m, s in slopes.items()) + "."
            + (f" Still rising (> {rising}): {', '.join(up)}." if up else f" Every curve is flat (<= {rising})."))


def _rows(job: Job) -> list[dict]:
    with open(job.path / "metrics.csv") as f:
        return list(csv.DictReader(f))


def split_markdown(spec: BenchmarkSpec, places: Places, split: str, folder: Path) -> tuple[list[str], list[dict]]:
    """One split's section of the results page and its table rows (for the verdicts)."""
    about = spec.splits[split]
    groups = stored_groups(spec, places, split)
    lines = [f"## {split}: `{' '.join(about.overrides)}`" + (f", {about.about}" if about.about else ""), ""]
    if not groups:
        return [*lines, "No finished runs yet.", ""], []
    rows = table_rows(groups)
    lines += [*table_markdown(rows, cost="round"), "", *spread_markdown(rows), ""]
    unseen = unseen_markdown(rows)
    if unseen:
        lines += [*unseen, ""]
    for key, window in SCORE_CURVES:
        line = flatness_line(groups, key, window, spec.rising)
        lines += [line, ""] if line else []
    alpha = alpha_markdown(rows)
    if alpha:
        lines += ["What alpha learned. " + alpha[0], *alpha[1:], ""]
    figure = folder / f"curves_{split}.png"
    plot_curves(groups, figure)
    lines += [f"![{split} curves]({_link(figure, places.page)})", ""]
    collapsed = folder / f"collapse_{split}.png"
    if collapse_figure(groups, collapsed):
        lines += ["With relu normalisation a client whose peers all score <= 0 in a layer gets no gradient for that "
                  "layer's weights (tests/test_pfedla_ablations.py): the share of such clients per layer, over rounds.",
                  "", f"![{split} collapse]({_link(collapsed, places.page)})", ""]
    extended = stored_groups(spec, places, split, extended=True)
    if extended:
        lines += [f"Run on past {spec.rounds} rounds (a validation curve, (a) or (b), still rose; rounds "
                  f"1-{spec.rounds} are the table's runs), scores at the best-validation round of all rounds:", "",
                  *table_markdown(table_rows(extended), cost="round"), ""]
    return lines, rows


def _link(path: Path, page: Path) -> str:
    return os.path.relpath(path, page.parent)


def hours_by_cpu(summaries: list[dict]) -> dict[str, float]:
    """Each run's seconds a round times its rounds, in hours, summed by the CPU that ran it: a run resumed on
    another machine split by its rounds on each (``timing.cpu_models``; one pace for all its rounds, its seconds a
    round), the rounds that name no CPU (from before rounds recorded it) under ""; runs that timed no round left
    out."""
    hours: dict[str, float] = {}
    for run in summaries:
        per_round = round_seconds(run)
        if math.isnan(per_round):
            continue
        timing = run["timing"]
        rounds = dict(timing.get("cpu_models") or {})
        unnamed = timing["rounds_timed"] - sum(rounds.values())
        if unnamed > 0:
            rounds[""] = rounds.get("", 0) + unnamed
        for cpu, count in rounds.items():
            hours[cpu] = hours.get(cpu, 0.0) + per_round * run["rounds"] * count / sum(rounds.values()) / 3600
    return dict(sorted(hours.items()))


def _by_cpu(hours: dict[str, float]) -> str:
    return "; ".join(f"{h:.1f} h on {cpu or 'a CPU not recorded'}" for cpu, h in hours.items())


def cells_markdown(spec: BenchmarkSpec, places: Places) -> list[str]:
    expected = [(split, m, s) for split, sp in spec.splits.items() for s in sp.seeds for m in spec.methods]
    done, runs = [], []
    for split, m, s in expected:
        summary = places.stored(Cell(split, m, s)) / "summary.json"
        if summary.is_file():
            done.append((split, m, s))
            runs.append(json.loads(summary.read_text()))
    untimed = sum(math.isnan(round_seconds(run)) for run in runs)
    hours = hours_by_cpu(runs)
    untimed_note = f"; {untimed} of them timed no round and are left out" if untimed else ""
    by_cpu = f" By CPU: {_by_cpu(hours)}." if len(hours) > 1 else ""
    lines = ["## Cells", "", f"{len(done)} of {len(expected)} cells finished ({sum(hours.values()):.1f} h of run "
             f"time in all: each cell's seconds a round times its rounds, summed over cells, which ran two at a time "
             f"on the machine that ran them{untimed_note}).{by_cpu}"]
    missing = [c for c in expected if c not in done]
    if missing:
        lines += [f"Not finished yet (`python -m pfedla.benchmark {spec.name} run` runs them, resuming any that has a "
                  "checkpoint): " + ", ".join(f"{split}/{m}_s{s}" for split, m, s in missing) + "."]
    return lines


def diverged_markdown(spec: BenchmarkSpec, places: Places) -> list[str]:
    """The methods whose first cell diverged at the chosen values, the trials tried at full scale and the one each
    ended on (pfedla/benchmark/fallback.py, ``fallback``), and every finished final cell that diverged."""
    lines = []
    for method in spec.methods:
        if not places.search_record(method).is_file() or (settled := fallback(spec, places, method)) is None:
            continue
        record = json.loads(places.search_record(method).read_text())
        first = first_cell(spec, method)
        tried = []
        for trial in record["trials"]:
            chosen = trial["number"] == record["chosen"]["number"]
            cell = chosen_run(spec, places, method) if chosen else probe_cell(spec, method, trial["number"])
            summary = places.stored(cell) / "summary.json"
            if trial["value"] is not None and summary.is_file():
                run = json.loads(summary.read_text())
                tried.append((trial, run, diverged(run)))
        tried.sort(key=lambda t: (-t[0]["value"], t[0]["number"]))
        said = ", ".join(f"trial {t['number']} (proxy {100 * t['value']:.2f}: "
                         + (f"diverged, {len(run['rejected_updates'])} updates rejected" if bad
                            else f"best validation {100 * run['best']['val/acc_mean']:.2f}") + ")"
                         for t, run, bad in tried)
        ended = (f"its final cells run at trial {settled.trial}'s values" if settled.trial is not None and
                 not settled.pending else f"trial {settled.trial} is still to run at full scale"
                 if settled.pending else "every other trial diverged too: its cells keep the chosen values")
        lines.append(f"- **{method}**, at full scale ({first.split}, seed {first.seed}): {said}; {ended}.")
    cells = [f"{split}/{m}_s{s}" for split, sp in spec.splits.items() for s in sp.seeds for m in spec.methods
             if diverged_run(places.stored(Cell(split, m, s)), spec.rounds)]
    if not lines and not cells:
        return []
    return ["## Runs that diverged", "",
            "A run diverged when the server rejected more than half of its client updates as non-finite. A method "
            "whose first cell diverged at the chosen values takes the next-best trial of its own search that does "
            "not diverge at full scale, for all of its cells (pfedla/benchmark/fallback.py).", "", *lines,
            *([""] if lines else []),
            "Final cells that diverged (in the tables as they are): " + (", ".join(cells) or "none") + "."]


def results_page(spec: BenchmarkSpec, places: Places) -> str:
    folder = places.store
    lines = [f"# Results: {spec.title}", ""]
    if spec.intro and (REPO / spec.intro).is_file():
        lines += [(REPO / spec.intro).read_text().rstrip(), ""]
    lines += [*protocol_markdown(spec, places), "", SCORES_EXPLAINED, "", ROUND_SECONDS_EXPLAINED, ""]
    rows_by_split = {}
    for split in spec.splits:
        section, rows = split_markdown(spec, places, split, folder)
        lines += section
        rows_by_split[split] = rows
    tests = comparisons(spec.reference, rows_by_split, spec.alpha, list(spec.methods))
    detectable = detectable_line(tests, spec.alpha)
    lines += ["## Verdicts", "", *verdict_table(tests, spec.reference, spec.alpha), "",
              *([detectable, ""] if detectable else []), *ablation_lines(tests, spec.reference, spec.alpha), ""]
    reduced = reduction_lines(spec, places)
    lines += [*reduced, *([""] if reduced else [])]
    diverged_lines = diverged_markdown(spec, places)
    lines += [*diverged_lines, *([""] if diverged_lines else []), *cells_markdown(spec, places)]
    if spec.notes and (REPO / spec.notes).is_file():
        lines += ["", (REPO / spec.notes).read_text().rstrip()]
    return "\n".join(lines) + "\n"


def render(spec: BenchmarkSpec, places: Places) -> None:
    places.store.mkdir(parents=True, exist_ok=True)
    pages = [(places.page, results_page(spec, places))]
    if places.tuning_page is not None:
        pages.append((places.tuning_page, tuning_page(spec, places)))
    for path, text in pages:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
