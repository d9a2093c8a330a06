"""The verdicts of a results page: the reference method minus every other, on each split and score, paired by seed,
and Holm's correction over that whole family (pfedla.stats). A verdict is "ahead" or "behind" only where the
Holm-adjusted p-value is at most the family-wise error rate; anything else is "no difference shown".

The family is the planned one: every method of the benchmark on every split, both scores, whether or not its
runs are finished. A comparison without two common seeds yet counts in the correction with p = 1, so a grid cut
short, or a page rendered half way, is never corrected over a smaller family than the one planned."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pfedla.stats import Paired, benjamini_hochberg, holm, holm_first_step_t, paired

SCORES = (("(a)", "best"), ("(b)", "best_adapted"))


@dataclass
class Comparison:
    split: str
    score: str  # (a) | (b)
    other: str
    result: Paired | None  # None: under two common seeds
    holm: float | None = None
    bh: float | None = None

    def verdict(self, alpha: float) -> str:
        if self.result is None:
            return "too few seeds"
        if self.holm is not None and self.holm <= alpha:
            return "ahead" if self.result.mean > 0 else "behind"
        return "no difference shown"


def _per_seed(row: dict, key: str) -> dict[int, float]:
    values = row["by_seed"][key]
    if key == "best_adapted" and not values:  # Local has one score: its (b) is its (a)
        return row["by_seed"]["best"]
    return values


def comparisons(reference: str, rows_by_split: dict[str, list[dict]], alpha: float = 0.05,
                methods: list[str] | None = None) -> list[Comparison]:
    """The page's family: the reference minus each other method (``methods``, the benchmark's, where given; else
    those with rows), on each split and both scores, Holm- and Benjamini-Hochberg-adjusted together. One without
    two common seeds (or without runs) is in the family with p = 1 and has no verdict yet."""
    found = []
    for split, rows in rows_by_split.items():
        by_label = {r["label"]: r for r in rows}
        ours = by_label.get(reference)
        for score, key in SCORES:
            for label in (methods if methods is not None else list(by_label)):
                if label == reference:
                    continue
                row = by_label.get(label)
                result = None if ours is None or row is None else paired(_per_seed(ours, key), _per_seed(row, key))
                found.append(Comparison(split, score, label, result))
    pvalues = [c.result.p if c.result is not None else 1.0 for c in found]
    for c, h, b in zip(found, holm(pvalues), benjamini_hochberg(pvalues)):
        if c.result is not None:
            c.holm, c.bh = h, b
    return found


def verdict_table(tests: list[Comparison], reference: str, alpha: float) -> list[str]:
    if not tests:
        return ["No comparison yet: the reference method and another need finished runs on the same seeds."]
    tested = [c for c in tests if c.result is not None]
    if not tested:
        return ["No paired test yet: each needs two or more seeds that both methods finished with a score."]
    family = (f"these {len(tests)} paired t-tests" if len(tested) == len(tests) else
              f"all {len(tests)} comparisons below, {len(tested)} of them tested so far (one without two common seeds "
              "counts with p = 1: the correction is the planned family's, never a smaller one's)")
    lines = [f"{reference} minus each method, in points (score at the best-validation round), seed by seed; family: "
             f"{family}, Holm-adjusted p (family-wise error {alpha:g}); BH: the Benjamini-Hochberg q-value of the "
             "same family, for reference.", "",
             "| split | score | minus | seeds | per seed | mean [95% CI] | p | Holm p | BH q | verdict |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in tests:
        r = c.result
        if r is None:
            lines.append(f"| {c.split} | {c.score} | {c.other} | – | – | – | – | – | – | too few seeds |")
            continue
        lines.append(f"| {c.split} | {c.score} | {c.other} | {r.n} | {', '.join(f'{d:+.2f}' for d in r.diffs)} "
                     f"| {r.mean:+.2f} [{r.low:+.2f}, {r.high:+.2f}] | {_p(r.p)} | {_p(c.holm)} | {_p(c.bh)} "
                     f"| {c.verdict(alpha)} |")
    return lines


def detectable_line(tests: list[Comparison], alpha: float) -> str:
    """What the family can show at all: the |t| (and the mean difference, in standard deviations of the per-seed
    differences) that Holm's first step needs at each number of seeds on the page. A family this large with
    few seeds can only show large, steady differences; "no difference shown" is not "equal"."""
    tested = [c for c in tests if c.result is not None]
    if not tested:
        return ""
    m = len(tests)  # the whole family, tested or not
    needs = [f"{n} seeds need |t| >= {holm_first_step_t(m, n, alpha):.1f} (a mean difference of at least "
             f"{holm_first_step_t(m, n, alpha) / math.sqrt(n):.1f} standard deviations of the per-seed differences)"
             for n in sorted({c.result.n for c in tested})]
    return (f"What this family can show: Holm's first step needs p <= {alpha:g} / {m} = {alpha / m:.2g}, so "
            + "; ".join(needs) + ". Later steps need less. \"No difference shown\" means none shown at this number "
            "of seeds, not that the methods are equal.")


def _p(p: float | None) -> str:
    return "–" if p is None else (f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}")


def ablation_lines(tests: list[Comparison], reference: str, alpha: float) -> list[str]:
    """In words, after correction: where the reference is ahead and behind, and whether its learned alpha beats
    every fixed alpha (the methods named ``<reference>_<rule>``)."""
    tested = [c for c in tests if c.result is not None]
    if not tested:
        return []
    ahead = [f"{c.other} ({c.split} {c.score}, {c.result.mean:+.2f})" for c in tested if c.verdict(alpha) == "ahead"]
    behind = [f"{c.other} ({c.split} {c.score}, {c.result.mean:+.2f})" for c in tested if c.verdict(alpha) == "behind"]
    lines = [f"- After Holm's correction, {reference} is ahead of: {', '.join(ahead) or 'none'}.",
             f"- After Holm's correction, {reference} is behind: {', '.join(behind) or 'none'}.",
             f"- Every other comparison tested ({len(tested) - len(ahead) - len(behind)} of {len(tested)}) shows no "
             "difference at this number of seeds" + (f"; {len(tests) - len(tested)} more are not tested yet (too few "
                                                      "seeds)." if len(tested) < len(tests) else ".")]
    planned = [c for c in tests if c.other.startswith(f"{reference}_")]
    fixed = [c for c in planned if c.result is not None]
    if planned:
        beaten = [c for c in fixed if c.verdict(alpha) == "ahead"]
        untested = len(planned) - len(fixed)
        # "no" once a fixed alpha is ahead of the learned one, or everything is tested and not all are behind it;
        # until then a verdict may still change (more seeds; Holm's adjusted p moves with the family's other p)
        settled = not untested or any(c.verdict(alpha) == "behind" for c in fixed)
        answer = ("yes" if len(beaten) == len(planned) else "no" if settled else "not settled yet")
        lines.append(f"- Does learned alpha beat every fixed alpha ({', '.join(sorted({c.other for c in planned}))})? "
                     f"**{answer}**: after correction, ahead in {len(beaten)} of the {len(fixed)} comparisons"
                     + (f" tested ({untested} more not tested yet)" if untested else "")
                     + "".join(f"; {_outcomes(fixed, score, alpha)}" for score in sorted({c.score for c in fixed}))
                     + ".")
    return lines


def _outcomes(tests: list[Comparison], score: str, alpha: float) -> str:
    """On one score: the comparisons the reference is ahead in, behind in, and shows no difference in, by name."""
    on = [c for c in tests if c.score == score]
    named = {v: [f"{c.other} on {c.split}: {c.result.mean:+.2f}" for c in on if c.verdict(alpha) == v]
             for v in ("ahead", "behind", "no difference shown")}
    return f"on {score} ahead in {len(named['ahead'])} of {len(on)}" + "".join(
        f", {v} in {len(named[v])} ({', '.join(named[v])})" for v in ("behind", "no difference shown") if named[v])
