"""pfedla.stats against hand computations on fixed vectors."""

import math
import statistics

import pytest

from pfedla.stats import benjamini_hochberg, best_by_validation, holm, paired


def test_holm_adjusts_sorted_p_values_by_the_hypotheses_left_and_keeps_them_monotone():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> raised to 0.06 (monotone)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == []


def test_benjamini_hochberg_scales_by_m_over_rank_and_keeps_them_monotone_from_the_top():
    # ranks 1..4: 0.005 x 4 = 0.02, 0.01 x 2 = 0.02, 0.03 x 4/3 = 0.04, 0.04 x 1 = 0.04
    assert benjamini_hochberg([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    # a smaller q above caps a larger one below: 0.02 x 2 = 0.04 > 0.03 x 1 -> 0.03
    assert benjamini_hochberg([0.02, 0.03]) == pytest.approx([0.03, 0.03])


def test_paired_difference_t_test_and_interval_match_closed_forms():
    # differences 2, 1, 3 points (seed 3 only in a): mean 2, std 1, t = 2 sqrt(3); with 2 degrees of freedom
    # P(|T| > t) = 1 - t / sqrt(t^2 + 2) exactly, and t_0.975 = 4.302653
    r = paired({0: 0.90, 1: 0.80, 2: 0.85, 3: 0.5}, {0: 0.88, 1: 0.79, 2: 0.82})
    assert r.seeds == (0, 1, 2) and r.diffs == pytest.approx((2, 1, 3))
    assert (r.mean, r.std, r.t) == pytest.approx((2, 1, 2 * math.sqrt(3)))
    assert r.p == pytest.approx(1 - r.t / math.sqrt(r.t ** 2 + 2))
    assert (r.low, r.high) == pytest.approx((2 - 4.302653 / math.sqrt(3), 2 + 4.302653 / math.sqrt(3)), abs=1e-5)
    assert paired({0: 0.9}, {0: 0.8, 1: 0.7}) is None  # one common seed: nothing to pair
    same = paired({0: 0.9, 1: 0.8}, {0: 0.9, 1: 0.8})
    assert (same.t, same.p) == (0.0, 1.0)  # zero on every seed: no difference, not an infinitely sure one
    sure = paired({0: 0.91, 1: 0.81}, {0: 0.9, 1: 0.8})
    assert sure.t == math.inf and sure.p == 0.0


def test_best_by_validation_takes_the_test_score_of_the_first_best_validation_round():
    rows = [{"round": "1", "val/acc_mean": "0.5", "test/acc_mean": "0.9"},
            {"round": "2", "val/acc_mean": "0.7", "test/acc_mean": "0.6"},
            {"round": "3", "val/acc_mean": "0.7", "test/acc_mean": "0.99"}]
    assert best_by_validation(rows) == (2, 0.6)  # never the test-best round, the first of tied validation
    assert best_by_validation(rows, upto=1) == (1, 0.9)
    assert best_by_validation(rows, prefix="adapted_") is None


def _row(label, best, adapted=None):
    return {"label": label, "by_seed": {"best": best, "best_adapted": adapted or {}}}


def test_verdicts_are_holm_corrected_over_the_whole_family_and_answer_the_ablation_question():
    from pfedla.benchmark.verdicts import ablation_lines, comparisons

    seeds = range(5)
    # pFedLA +1.0, +1.1, ... points over each fixed alpha on every seed: t large, p tiny; +-1 against fedavg: p = 1
    pfedla = _row("pfedla", {s: 0.9 + 0.001 * s for s in seeds}, {s: 0.9 for s in seeds})
    fixed = [_row(f"pfedla_{rule}", {s: 0.89 - 0.0001 * s * s for s in seeds}, {s: 0.89 - 0.0001 * s for s in seeds})
             for rule in ("uniform", "self")]
    fedavg = _row("fedavg", {s: 0.9 + 0.001 * s + (0.01 if s % 2 else -0.01) for s in seeds})
    tests = comparisons("pfedla", {"split": [pfedla, *fixed, fedavg]})
    assert len(tests) == 6 and {t.other for t in tests} == {"pfedla_uniform", "pfedla_self", "fedavg"}
    raw = [t.result.p for t in tests if t.result is not None]
    expected = holm(raw)  # the family: every comparison on the page, both scores
    assert [t.holm for t in tests if t.result is not None] == pytest.approx(expected)
    local_b = next(t for t in tests if t.other == "fedavg" and t.score == "(b)")
    assert local_b.result.seeds == tuple(seeds)  # no (b): its (a) stands in, as for Local
    lines = "\n".join(ablation_lines(tests, "pfedla", 0.05))
    assert "Does learned alpha beat every fixed alpha (pfedla_self, pfedla_uniform)? **yes**" in lines
    weaker = _row("pfedla_similarity", {s: 0.9 + 0.001 * s - (0.002 if s % 2 else -0.001) for s in seeds})
    lines = "\n".join(ablation_lines(comparisons("pfedla", {"split": [pfedla, *fixed, weaker]}), "pfedla", 0.05))
    assert "**no**: after correction, ahead in 4 of the 6 comparisons" in lines
    # what is not ahead is told apart: behind (a difference shown, the other way) or no difference shown
    assert "on (a) ahead in 2 of 3, no difference shown in 1 (pfedla_similarity on split: +0.02)" in lines
    assert "on (b) ahead in 2 of 3, no difference shown in 1 (pfedla_similarity on split: -0.18)." in lines
    behind = _row("pfedla_similarity", {s: 0.95 + 0.001 * s for s in seeds}, {s: 0.95 for s in seeds})
    lines = "\n".join(ablation_lines(comparisons("pfedla", {"split": [pfedla, *fixed, behind]}), "pfedla", 0.05))
    assert "on (a) ahead in 2 of 3, behind in 1 (pfedla_similarity on split: -5.00)" in lines, lines


def test_holm_first_step_t_matches_printed_t_tables():
    from pfedla.stats import holm_first_step_t

    assert holm_first_step_t(1, 5) == pytest.approx(2.776, abs=1e-3)  # t(0.975, 4): a single test
    assert holm_first_step_t(10, 5) == pytest.approx(5.598, abs=1e-3)  # t(0.9975, 4): alpha / 10, two-sided
    assert holm_first_step_t(5, 3) == pytest.approx(9.925, abs=1e-3)  # t(0.995, 2)


@pytest.mark.parametrize("scale, verdict", [(1.01, "ahead"), (0.99, "no difference shown")])
def test_the_detectable_t_is_where_the_family_s_strongest_verdict_flips(scale, verdict):
    """A method whose paired t is just above (below) the |t| the page says Holm's first step needs is (is not)
    called ahead, in a family of 2 x 4 tests: the t the page prints is the one its verdicts use."""
    from pfedla.benchmark.verdicts import comparisons, detectable_line
    from pfedla.stats import holm_first_step_t

    seeds, tests = range(5), 8
    needed = holm_first_step_t(tests, len(seeds))
    spread = [0.1 * k for k in (-2, -1, 0, 1, 2)]  # points; their std is 0.1 * sqrt(2.5)
    mean = scale * needed * statistics.stdev(spread) / math.sqrt(len(seeds))
    best = {s: 0.8 + (mean + spread[s]) / 100 for s in seeds}
    pfedla, level = _row("pfedla", best, best), {s: 0.8 for s in seeds}
    tied = [_row(f"tied{k}", {s: best[s] - d / 100 for s, d in zip(seeds, (0.3, -0.3, 0.3, -0.3, 0.0))})
            for k in range(3)]  # pfedla minus these: +-0.3 points, mean 0: p = 1
    found = comparisons("pfedla", {"split": [pfedla, _row("fedavg", level, level), *tied]})
    assert len(found) == tests
    strong = [c for c in found if c.other == "fedavg"]
    assert [c.verdict(0.05) for c in strong] == [verdict, verdict]
    assert abs(strong[0].result.t) == pytest.approx(scale * needed)
    line = detectable_line(found, 0.05)
    assert f"5 seeds need |t| >= {needed:.1f}" in line and "0.05 / 8" in line


def test_a_page_with_one_seed_per_method_says_no_test_was_run_rather_than_a_family_of_none():
    from pfedla.benchmark.verdicts import comparisons, verdict_table

    one = comparisons("pfedla", {"split": [_row("pfedla", {0: 0.9}, {0: 0.9}), _row("fedavg", {0: 0.8}, {0: 0.8})]})
    assert [c.verdict(0.05) for c in one] == ["too few seeds", "too few seeds"]
    assert verdict_table(one, "pfedla", 0.05) == [
        "No paired test yet: each needs two or more seeds that both methods finished with a score."]
    two = comparisons("pfedla", {"split": [_row("pfedla", {0: 0.9, 1: 0.91}), _row("fedavg", {0: 0.8, 1: 0.82})]})
    assert "family: these 2 paired t-tests" in verdict_table(two, "pfedla", 0.05)[0]


def test_a_comparison_not_tested_yet_stays_in_the_family_with_p_1():
    """The family is the planned one: a method with one seed so far, and one with no runs at all, count in Holm's
    correction with p = 1. A difference that a family of the two tested comparisons would call ahead (Holm p =
    2p <= 0.05) is not ahead in the planned family of six (6p > 0.05)."""
    from pfedla.benchmark.verdicts import ablation_lines, comparisons, detectable_line, verdict_table

    pfedla = _row("pfedla", {0: 0.90, 1: 0.91, 2: 0.92}, {0: 0.90, 1: 0.91, 2: 0.92})
    fedavg = _row("fedavg", {0: 0.89, 1: 0.896, 2: 0.909}, {0: 0.89, 1: 0.896, 2: 0.909})  # +1.0, +1.4, +1.1
    fedbn = _row("fedbn", {0: 0.8}, {0: 0.8})  # one seed: too few
    found = comparisons("pfedla", {"split": [pfedla, fedavg, fedbn]}, 0.05, ["pfedla", "fedavg", "fedbn", "ditto"])
    assert [(c.other, c.score) for c in found] == [(m, s) for s in ("(a)", "(b)") for m in ("fedavg", "fedbn", "ditto")]
    tested = [c for c in found if c.result is not None]
    assert [c.other for c in tested] == ["fedavg", "fedavg"]
    p = tested[0].result.p
    assert 0.05 / 6 < p < 0.05 / 2  # the case this test is about
    assert [c.holm for c in tested] == pytest.approx([6 * p, 6 * p])  # Holm by hand: m = 6, the four others p = 1
    assert [c.verdict(0.05) for c in found] == ["no difference shown", "too few seeds", "too few seeds"] * 2
    shrunk = comparisons("pfedla", {"split": [pfedla, fedavg]})  # the family of the tested alone: smaller, wrongly
    assert [c.verdict(0.05) for c in shrunk] == ["ahead", "ahead"]
    assert "all 6 comparisons below, 2 of them tested so far" in verdict_table(found, "pfedla", 0.05)[0]
    assert "0.05 / 6" in detectable_line(found, 0.05)
    ablation = _row("pfedla_self", {0: 0.89, 1: 0.896, 2: 0.909}, {0: 0.89, 1: 0.896, 2: 0.909})
    fixed = comparisons("pfedla", {"split": [pfedla, ablation], "other": [pfedla]}, 0.05, ["pfedla", "pfedla_self"])
    lines = "\n".join(ablation_lines(fixed, "pfedla", 0.05))
    # ahead where tested (4p <= 0.05 in this family of four), but two are not tested: no "yes" yet
    assert "**not settled yet**: after correction, ahead in 2 of the 2 comparisons tested (2 more not tested yet)" \
        in lines, lines
    assert "2 more are not tested yet (too few seeds)" in lines
    # one fixed alpha tested and not shown behind, another untested: its verdict may still change, no "no" yet
    methods = ["pfedla", "pfedla_self", "pfedla_uniform"]
    uniform = _row("pfedla_uniform", {0: 0.8}, {0: 0.8})
    tied = _row("pfedla_self", {0: 0.903, 1: 0.907, 2: 0.92}, {0: 0.903, 1: 0.907, 2: 0.92})  # -0.3, +0.3, 0.0
    lines = "\n".join(ablation_lines(comparisons("pfedla", {"split": [pfedla, tied, uniform]}, 0.05, methods),
                                      "pfedla", 0.05))
    assert "(pfedla_self, pfedla_uniform)? **not settled yet**: after correction, ahead in 0 of the 2" in lines, lines
    # a fixed alpha shown ahead of the learned one settles it, untested ones or not
    ahead = _row("pfedla_self", {0: 0.95, 1: 0.961, 2: 0.969}, {0: 0.95, 1: 0.961, 2: 0.969})  # -5.0, -5.1, -4.9
    lines = "\n".join(ablation_lines(comparisons("pfedla", {"split": [pfedla, ahead, uniform]}, 0.05, methods),
                                      "pfedla", 0.05))
    assert "**no**: after correction, ahead in 0 of the 2 comparisons tested (2 more not tested yet)" in lines, lines
    assert "behind in 1 (pfedla_self on split: -5.00)" in lines, lines
