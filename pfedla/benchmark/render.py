"""A benchmark's two pages, rebuilt from its store alone (so anyone can rebuild them from a clone): the results page
(per split: the table, the spread over clients, alpha, flatness, curves; then the verdicts of the reference method
against every other, Holm-corrected over the page's whole family) and the tuning page (budgets, spaces, every
trial, the chosen values)."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

from pfedla.benchmark.grid import chosen_run, diverged, diverged_run, fallback, first_cell, probe_cell
from pfedla.benchmark.paths import REPO, Cell, Places
from pfedla.benchmark.spec import BenchmarkSpec, budget
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
from pfedla.stats import WINDOW, WINDOW_ADAPTED, curve, late_slope
from pfedla.timing import cpu_models, round_seconds


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
        f"- {spec.rounds} rounds per run; every score taken at the round of best *validation* accuracy; runs whose "
        f"validation curve still rose at the end (slope > {spec.rising} points per 10 rounds over the last "
        f"{WINDOW} rounds) ran on to {spec.extend_rounds} rounds, shown beside the tables, never in them;"
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
    for key, window in (("val/acc_mean", WINDOW), ("val/adapted_acc_mean", WINDOW_ADAPTED)):
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
        lines += [f"Run on past {spec.rounds} rounds (their validation curves still rose; rounds 1-{spec.rounds} are "
                  "the table's runs), scores at the best-validation round of all rounds:", "",
                  *table_markdown(table_rows(extended), cost="round"), ""]
    return lines, rows


def _link(path: Path, page: Path) -> str:
    return os.path.relpath(path, page.parent)


def hours_by_cpu(summaries: list[dict]) -> dict[str, float]:
    """Each run's seconds a round times its rounds, in hours, summed by the CPU that ran it: a run resumed on
    another machine split by its rounds on each (``timing.cpu_models``); runs that name no CPU (from before rounds
    recorded it) under ""; runs that timed no round left out."""
    hours: dict[str, float] = {}
    for run in summaries:
        per_round = round_seconds(run)
        if math.isnan(per_round):
            continue
        rounds = (run.get("timing") or {}).get("cpu_models") or {"": 1}
        for cpu in cpu_models(run) or [""]:
            share = per_round * run["rounds"] * rounds[cpu] / sum(rounds.values())
            hours[cpu] = hours.get(cpu, 0.0) + share / 3600
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
    ended on (pfedla/benchmark/grid.py, ``fallback``), and every finished final cell that diverged."""
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
            "not diverge at full scale, for all of its cells (pfedla/benchmark/grid.py).", "", *lines,
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
    tests = comparisons(spec.reference, rows_by_split, spec.alpha)
    detectable = detectable_line(tests, spec.alpha)
    lines += ["## Verdicts", "", *verdict_table(tests, spec.reference, spec.alpha), "",
              *([detectable, ""] if detectable else []), *ablation_lines(tests, spec.reference, spec.alpha), ""]
    diverged_lines = diverged_markdown(spec, places)
    lines += [*diverged_lines, *([""] if diverged_lines else []), *cells_markdown(spec, places)]
    if spec.notes and (REPO / spec.notes).is_file():
        lines += ["", (REPO / spec.notes).read_text().rstrip()]
    return "\n".join(lines) + "\n"


def tuning_page(spec: BenchmarkSpec, places: Places) -> str:
    lines = [f"# Hyperparameters of {spec.title}, chosen on validation", "",
             f"Every method of `conf/benchmark/{spec.name}.yaml` is searched by "
             f"`python -m pfedla.benchmark {spec.name} search`: seeded {spec.search.sampler.upper()} "
             f"(seed {spec.search.seed}; TPE samples its first 10 trials at random) over the method's own knobs "
             "(`conf/hparams_search/<space>.yaml`), on one proxy for all: the "
             f"run's settings with `{' '.join(spec.search.proxy)}`, the dataset's test images never read "
             "(`dataset.test_images=unused`). A trial's objective is its score-(a) validation accuracy over its last "
             "3 evaluations (pfedla/search.py). The chosen values are the best objective's; a float chosen within 5% "
             "of its log range's end is flagged (widen the range and search again).", "",
             "| method | trials | failed | chosen (objective, trial) | at an edge | trial hours |",
             "| --- | --- | --- | --- | --- | --- |"]
    records = {}
    for method in spec.methods:
        path = places.search_record(method)
        if not path.is_file():
            lines.append(f"| {method} | not searched yet ({budget(spec, method)} planned) | | | | |")
            continue
        record = records[method] = json.loads(path.read_text())
        chosen = record["chosen"]
        values = ", ".join(f"{k}={_fmt(v)}" for k, v in chosen["params"].items())
        failed = sum(1 for t in record["trials"] if t["state"] == "FAIL" and not t["interrupted"])
        why = spec.methods[method].trials_why
        lines.append(f"| {method} | {record['budget']}{f' ({why})' if why else ''} | {failed} | {values} "
                     f"({100 * chosen['value']:.2f}, #{chosen['number']}) | {', '.join(chosen['at_edge']) or '–'} "
                     f"| {_trial_seconds(record) / 3600:.2f} |")
    if records:
        total = sum(map(_trial_seconds, records.values())) / 3600
        lines += ["", f"Trial hours: each trial's wall seconds, summed ({total:.1f} h over these searches; trials that "
                  "ran side by side each count their own)."]
    for method, record in records.items():
        keys = sorted({k for t in record["trials"] for k in t["params"]})
        layers = sorted({k for t in record["trials"] for k in t.get("alpha_self", {})})
        space = f"`conf/hparams_search/{record['space']}.yaml`"
        lines += ["", f"## {method}: {len(record['trials'])} trials (space {space})",
                  "", "| trial | " + " | ".join(keys) + " | objective (val) | s |"
                  + (" alpha self-weight " + " / ".join(layers) + " |" if layers else ""),
                  "| --- |" + " --- |" * (len(keys) + 2 + bool(layers))]
        for t in record["trials"]:
            value = ("interrupted" if t["interrupted"] else t.get("error", "failed")) if t["value"] is None \
                else f"{100 * t['value']:.2f}" + (" **chosen**" if t["number"] == record["chosen"]["number"] else "")
            alpha = ([" / ".join(f"{t['alpha_self'][layer]:.2f}" for layer in layers)] if layers and "alpha_self" in t
                     else ["–"] if layers else [])
            lines.append(f"| {t['number']} | " + " | ".join(_fmt(t["params"].get(k, "–")) for k in keys)
                         + f" | {value} | {_fmt(t['seconds'] or 0, 0)} |" + "".join(f" {a} |" for a in alpha))
    lines += proxy_check_markdown(spec, places)
    return "\n".join(lines) + "\n"


def _trial_seconds(record: dict) -> float:
    return sum(t["seconds"] or 0.0 for t in record["trials"])


def proxy_check_markdown(spec: BenchmarkSpec, places: Places) -> list[str]:
    """Each checked method's best trials by proxy objective, and what they reach at full scale (the first split, its
    first seed; the chosen trial's is that final run): does the proxy rank them as full scale does?"""
    from scipy.stats import spearmanr

    split = next(iter(spec.splits))
    seed = spec.splits[split].seeds[0]
    lines = []
    for method in spec.methods:
        record_path = places.search_record(method)
        if not record_path.is_file():
            continue
        record = json.loads(record_path.read_text())
        rows = []
        for trial in record["trials"]:
            chosen = trial["number"] == record["chosen"]["number"]
            cell = chosen_run(spec, places, method) if chosen else probe_cell(spec, method, trial["number"])
            summary = places.stored(cell) / "summary.json"
            if summary.is_file():
                best = json.loads(summary.read_text())["best"]
                rows.append((trial["number"], trial["value"], best["val/acc_mean"], best["test/acc_mean"], chosen))
        if len(rows) < 2:
            continue
        rows.sort(key=lambda r: -r[1])
        full_best = max(rows, key=lambda r: r[2])
        rho = spearmanr([r[1] for r in rows], [r[2] for r in rows])[0]
        lines += ["", f"**{method}** ({len(rows)} trials at full scale):", "",
                  "| trial | proxy objective (val) | full scale: best val (a) | test (a) at that round |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| {n}{' (chosen)' if chosen else ''} | {100 * p:.2f} | {100 * v:.2f} | {100 * t:.2f} |"
                  for n, p, v, t, chosen in rows]
        agree = "the proxy's choice is also the best at full scale" if full_best[4] else (
            f"at full scale trial {full_best[0]} beats the proxy's choice on validation")
        lines += ["", f"Spearman rank correlation of proxy and full-scale validation: {rho:+.2f}; {agree}."]
    if not lines:
        return []
    return ["", "## How well the proxy predicts full scale", "",
            f"`python -m pfedla.benchmark {spec.name} proxy-check`: the best {spec.proxy_check.top} trials by proxy "
            f"objective of the checked methods, each run like a final run ({split}, seed {seed}, {spec.rounds} "
            "rounds), scored as the tables are.", *lines]


def _fmt(value, digits: int = 4) -> str:
    if isinstance(value, float):
        return f"{value:.0f}" if digits == 0 else f"{value:.{digits}g}"
    return str(value)


def render(spec: BenchmarkSpec, places: Places) -> None:
    places.store.mkdir(parents=True, exist_ok=True)
    pages = [(places.page, results_page(spec, places))]
    if places.tuning_page is not None:
        pages.append((places.tuning_page, tuning_page(spec, places)))
    for path, text in pages:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
