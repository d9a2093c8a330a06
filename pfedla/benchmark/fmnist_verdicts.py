"""The statistics behind docs/RESULTS.md's verdicts, from the runs' metrics.csv rows and the report's table
rows: the best round by validation, how fast a curve still climbs, and pFedLA against another method,
by the means and seed by seed (paired t-test). Pure functions: ``results_fmnist.py`` runs the grid and
writes the page with them. The statistics themselves live in pfedla.stats; this page of the previous protocol
(before ``python -m pfedla.benchmark``) keeps its own wording of the verdicts until the benchmark's page
replaces it."""

from __future__ import annotations

import csv
import math
import statistics

from pfedla.stats import RISING, WINDOW, WINDOW_ADAPTED, best_by_validation, curve, late_slope  # noqa: F401


def _verdict(rows: list[dict], key: str, score: str) -> str:
    """pFedLA against the best other method on one score, in points and in units of the seed spread."""
    def value(r):
        v = r[key] or (r["best"] if key == "best_adapted" and r["label"] == "local" else None)
        return v

    scored = [(r["label"], value(r), len(r["seeds"])) for r in rows if value(r) is not None]
    pfedla = next((s for s in scored if s[0] == "pfedla"), None)
    others = sorted((s for s in scored if s[0] != "pfedla"), key=lambda s: -s[1][0])
    if pfedla is None or not others:
        return f"- {score}: not enough finished runs to compare."
    best = others[0]
    diff = 100 * (pfedla[1][0] - best[1][0])
    spread = 100 * max(pfedla[1][1], best[1][1])
    seeds = min(pfedla[2], best[2])
    if seeds < 2:
        strength = "one seed: no spread to judge it by"
    elif abs(diff) > 2 * spread:
        strength = f"more than twice the larger seed std ({spread:.2f})"
    else:
        strength = f"within twice the larger seed std ({spread:.2f}): not a clear difference"
    rank = 1 + sum(1 for s in others if s[1][0] > pfedla[1][0])
    rows_by_label = {r["label"]: r for r in rows}
    paired = _paired(rows_by_label["pfedla"], rows_by_label[best[0]], key)
    if round(abs(diff), 2) == 0:
        return (f"- {score}: pFedLA is level with the best other method, {best[0]} (to 0.01 points; {strength}); "
                f"they share rank {rank} of {len(scored)}.{paired}")
    word = "ahead of" if diff > 0 else "behind"
    return (f"- {score}: pFedLA is {word} the best other method, {best[0]}, by {abs(diff):.2f} points "
            f"({strength}); it ranks {rank} of {len(scored)}.{paired}")


def _val_curve(job, key: str) -> dict[int, float]:
    with open(job.path / "metrics.csv") as f:
        return curve(list(csv.DictReader(f)), key)


def rising_markdown(groups: dict, key: str = "val/acc_mean", score: str = "(a)") -> list[str]:
    """Whether each method's validation curve of one score has flattened by its last round, over seeds (score (b),
    computed every 10 rounds, is fitted through its evaluations in the last WINDOW_ADAPTED rounds)."""
    window = WINDOW_ADAPTED if "adapted" in key else WINDOW
    slopes = {}
    for label, jobs in groups.items():
        found = [g for g in (late_slope(_val_curve(j, key), window) for j in jobs) if g is not None]
        if found:
            slopes[label] = statistics.fmean(found)
    if not slopes:
        return []
    rising = [label for label, g in slopes.items() if round(g, 2) > RISING]  # as printed
    verdict = (f" Above {RISING}, still rising: {', '.join(rising)} (`extend --rounds N --methods ...` runs their "
               "cells on from the last checkpoint, beside the tables)." if rising
               else f" Every curve is flat (at most {RISING}).")
    return [f"Has every curve flattened? Validation accuracy {score}: the least-squares slope over a run's last "
            f"{window} rounds, in points per 10 rounds, mean over seeds: "
            + ", ".join(f"{label} {g:+.2f}" for label, g in slopes.items()) + "." + verdict]


def _against(rows: list[dict], label: str, key: str, title: str) -> str:
    """pFedLA against one named method on one score (Local on (a): does aggregating peers' layers beat not
    collaborating? FedAvg on (b): does it beat fine-tuning a global model?)."""
    by_label = {r["label"]: r for r in rows}
    if "pfedla" not in by_label or label not in by_label or not by_label["pfedla"][key] or not by_label[label][key]:
        return f"- {title}: not enough finished runs to compare."
    diff = 100 * (by_label["pfedla"][key][0] - by_label[label][key][0])
    return f"- {title}: pFedLA {diff:+.2f} points." + _paired(by_label["pfedla"], by_label[label], key)


T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}  # Student t


def paired_difference(a: dict[int, float], b: dict[int, float]) -> tuple[list[float], float, float, float] | None:
    """Per-seed differences a - b in points over the seeds both have, their mean, std and the paired t statistic
    (None under two common seeds). A seed fixes the partition every method shares, so the seed-to-seed spread
    of the partition cancels in the difference."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    diffs = [100 * (a[s] - b[s]) for s in seeds]
    mean, std = statistics.fmean(diffs), statistics.stdev(diffs)
    if std > 0:
        t = mean / (std / len(diffs) ** 0.5)
    else:  # every seed the same difference: infinitely sure of it, unless it is none
        t = math.copysign(math.inf, mean) if mean else 0.0
    return diffs, mean, std, t


def _paired(pfedla: dict, other: dict, key: str) -> str:
    """The verdict's paired reading: pFedLA minus the other method, seed by seed, and its paired t-test."""
    def values(row):
        if key == "best_adapted" and row["label"] == "local":
            return row["by_seed"]["best"]  # Local's (b) is its (a)
        return row["by_seed"][key]

    found = paired_difference(values(pfedla), values(other))
    if found is None:
        return ""
    diffs, mean, std, t = found
    critical = T_975.get(len(diffs) - 1)
    judged = ("" if critical is None else
              f"; {'significant' if abs(t) > critical else 'not significant'} at 5% (two-sided paired t-test, "
              f"|t| {abs(t):.2f} vs {critical})")
    seeds = ", ".join(f"{d:+.2f}" for d in diffs)
    return (f" Seed by seed (the seeds both have; a seed's partition is the same for both): {seeds} points, "
            f"mean {mean:+.2f} ± {std:.2f}{judged}.")
