"""A benchmark's tuning page, from its store alone: every method's search (budget, space, every trial, the chosen
values, the floats chosen at an edge of their range, the trial hours) and how well the proxy predicts full scale
(the proxy check's runs)."""

from __future__ import annotations

import json

from pfedla.benchmark.fallback import chosen_run, probe_cell
from pfedla.benchmark.paths import Places
from pfedla.benchmark.spec import BenchmarkSpec, budget


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
