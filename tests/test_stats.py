"""Statistics against hand-computed references: pass@k by brute force, bootstrap coverage, paired tests."""

import itertools
import math
import random
from fractions import Fraction

import numpy as np
import pytest

from branchmerge.evaluate.stats import (
    accuracy_table,
    bootstrap_mean,
    compare,
    group_order,
    length_table,
    merge_synergy,
    paired_compare,
    paired_test,
    pass1,
    pass1_ci,
    pass1_table,
    pass_at_k,
    pass_at_k_curve,
    pass_at_k_curves,
    sign_flip_p,
    wilson_interval,
)
from branchmerge.records import EvalSample


def _s(model, item, passed, domain="d", sample=0, level=None, tokens=1, reasoning=0, finish="stop"):
    return EvalSample(
        model=model,
        benchmark="b",
        item_id=item,
        domain=domain,
        level=level,
        sample=sample,
        output="x",
        output_tokens=tokens,
        reasoning_tokens=reasoning,
        finish_reason=finish,
        passed=passed,
    )


def _item(model, item, passes, n, domain="d"):
    """n samples of one item, the first `passes` of them correct."""
    return [_s(model, item, k < passes, domain=domain, sample=k) for k in range(n)]


# ------------------------------------------------------------------------------------------------ pass@k


def _brute_pass_at_k(n, c, k):
    """Share of the k-subsets of n samples (c correct) that hold at least one correct sample."""
    outcomes = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(outcomes, k))
    return sum(any(s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_enumeration_of_subsets():
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(_brute_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_for_large_n():
    # 1 − C(n−c, k)/C(n, k) in exact rational arithmetic; the naive float form overflows at C(1000, 500)
    for n, k in [(100, 50), (1000, 500)]:
        for c in [0, 1, 2, 5, n // 2, n - k, n - k + 1, n]:
            exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
            got = pass_at_k(n, c, k)
            assert math.isfinite(got) and got == pytest.approx(float(exact), rel=1e-9, abs=1e-12), (n, c, k)
    assert pass_at_k(100, 1, 50) == pytest.approx(0.5)  # one correct sample of 100: in half the 50-subsets
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is c/n


def test_pass_at_k_rejects_impossible_counts():
    for n, c, k in [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)]:
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


def test_pass_at_k_curve_uses_each_items_own_n():
    samples = _item("m", "a", 1, 3) + _item("m", "b", 2, 5)
    curve = pass_at_k_curve(samples)
    assert sorted(curve) == [1, 2, 3]  # k stops at the smallest n
    assert curve[1] == pytest.approx((1 / 3 + 2 / 5) / 2)
    # item a: 1 − C(2,2)/C(3,2) = 2/3; item b: 1 − C(3,2)/C(5,2) = 1 − 3/10
    assert curve[2] == pytest.approx((2 / 3 + 0.7) / 2)
    assert curve[3] == pytest.approx((1.0 + 0.9) / 2)  # a: n−c = 2 < 3 → 1; b: 1 − 1/10
    assert sorted(pass_at_k_curve(samples, max_k=2)) == [1, 2]
    curves = pass_at_k_curves(samples + _item("m", "c", 0, 2, domain="e"), by="domain")
    assert sorted(curves["m"]) == ["all", "d", "e"] and sorted(curves["m"]["all"]) == [1, 2]


def test_pass1_is_the_mean_over_items_of_the_mean_over_samples():
    samples = _item("m", "a", 1, 1) + _item("m", "b", 0, 3)
    assert pass1(samples) == pytest.approx(0.5)  # items weigh the same, whatever their n
    assert accuracy_table(samples)["m"]["all"][0] == pytest.approx(0.25)  # the sample-weighted figure


# ------------------------------------------------------------------------------------------------ bootstrap


def _synthetic(rng, items, n, draw_p):
    samples = []
    for i in range(items):
        p = draw_p(rng)
        samples += [_s("m", str(i), rng.random() < p, sample=k) for k in range(n)]
    return samples


def test_bootstrap_interval_covers_the_truth_about_95_percent_of_the_time():
    rng = random.Random(0)
    truth = 2 / 5  # items' pass rates ~ Beta(2, 3), mean 0.4
    hits = 0
    for rep in range(200):
        samples = _synthetic(rng, 40, 4, lambda r: r.betavariate(2, 3))
        e = pass1_ci(samples, resamples=500, seed=rep)
        hits += e.lo <= truth <= e.hi
        assert e.lo <= e.value <= e.hi and e.items == 40 and e.samples == 160
    assert 0.88 <= hits / 200 <= 0.99


def test_bootstrap_interval_is_wider_when_samples_of_an_item_agree():
    rng = random.Random(1)
    # same overall rate (0.5) and the same 50 items × 8 samples; only the correlation within items differs
    correlated = _synthetic(rng, 50, 8, lambda r: float(r.random() < 0.5))  # an item passes always or never
    independent = _synthetic(rng, 50, 8, lambda r: 0.5)
    wide, narrow = pass1_ci(correlated), pass1_ci(independent)
    assert wide.hi - wide.lo > 2 * (narrow.hi - narrow.lo)
    # a per-sample interval ignores the correlation and is far too narrow for the correlated set
    passes = sum(s.passed for s in correlated)
    lo, hi = wilson_interval(passes, len(correlated))
    assert wide.hi - wide.lo > 2 * (hi - lo)
    assert wide.hi - wide.lo == pytest.approx(2 * 1.96 * 0.5 / math.sqrt(50), rel=0.25)  # normal theory


def test_bootstrap_is_seeded_and_exact_for_constant_values():
    values = list(np.random.default_rng(0).random(30))
    assert bootstrap_mean(values, seed=3) == bootstrap_mean(values, seed=3)
    assert bootstrap_mean(values, seed=3) != bootstrap_mean(values, seed=4)
    assert bootstrap_mean([0.7] * 10) == pytest.approx((0.7, 0.7, 0.7))
    # 2 items: resampled means are 0, .5, 1 with probabilities 1/4, 1/2, 1/4 → 95% interval [0, 1]
    assert bootstrap_mean([0.0, 1.0])[1:] == (0.0, 1.0)


def test_pass1_table_has_every_domain_and_all():
    samples = _item("m", "a", 2, 4, domain="x") + _item("m", "b", 4, 4, domain="y")
    table = pass1_table(samples, resamples=200)
    assert sorted(table["m"]) == ["all", "x", "y"]
    assert table["m"]["x"].value == 0.5 and table["m"]["all"].value == 0.75 and table["m"]["all"].items == 2


# ------------------------------------------------------------------------------------------------ paired


def _means(values):
    return {("b", str(i)): v for i, v in enumerate(values)}


def test_paired_compare_dominating_model_is_significant():
    a, b = _means([1.0] * 15 + [0.5] * 5), _means([0.0] * 15 + [0.5] * 5)
    c = paired_compare(a, b)
    assert c.diff == pytest.approx(0.75) and c.items == 20 and c.left_out == 0
    assert c.lo > 0.5 and c.hi <= 1.0
    assert c.p == pytest.approx(2 / 2001) and c.p_sign == pytest.approx(2 / 2**15)  # exact: 15 wins
    assert c.significant


def test_paired_compare_identical_models_are_not_different():
    a = _means([0.0, 1.0, 0.25, 0.5] * 5)
    c = paired_compare(a, dict(a))
    assert (c.diff, c.lo, c.hi, c.p, c.p_sign) == (0.0, 0.0, 0.0, 1.0, 1.0)
    assert not c.significant


def test_paired_compare_two_items_hand_computed():
    # diffs [1, 0]: resampled means 0 (p=1/4), .5 (1/2), 1 (1/4) → p = 2·P(mean ≤ 0) ≈ 0.5
    c = paired_compare(_means([1.0, 0.0]), _means([0.0, 0.0]), resamples=20000)
    assert c.diff == 0.5 and (c.lo, c.hi) == (0.0, 1.0)
    assert c.p == pytest.approx(0.5, abs=0.03) and c.p_sign == 1.0 and not c.significant


def test_few_items_bootstrap_is_overconfident_so_the_sign_flip_test_guards():
    # three wins and nothing else: the bootstrap never resamples a loss, the exact test gives 2/8
    c = paired_compare(_means([1.0, 1.0, 1.0]), _means([0.0, 0.0, 0.0]))
    assert c.p < 0.01 and c.p_sign == pytest.approx(0.25) and not c.significant


def test_paired_compare_uses_only_shared_items():
    a = _means([1.0, 1.0, 0.0])
    b = {**_means([0.0, 1.0]), ("b", "x"): 1.0}
    c = paired_compare(a, b)
    assert c.items == 2 and c.left_out == 2 and c.diff == pytest.approx(0.5)
    with pytest.raises(ValueError, match="share no items"):
        paired_compare(_means([1.0]), {("b", "z"): 0.0})


def test_sign_flip_monte_carlo_is_seeded_and_agrees_with_exact():
    rng = np.random.default_rng(0)
    diffs = list(rng.choice([-1.0, 0.0, 1.0, 0.5], size=40, p=[0.2, 0.3, 0.3, 0.2]))
    assert sign_flip_p(diffs, seed=1) == sign_flip_p(diffs, seed=1)
    assert 0 < sign_flip_p(diffs) <= 1
    # 16 non-zero differences: the exact path; the normal approximation is close
    d = [1.0] * 11 + [-1.0] * 5
    exact = sum(math.comb(16, j) for j in range(17) if abs(2 * j - 16) >= 6) / 2**16
    assert sign_flip_p(d) == pytest.approx(exact)
    d = [1.0] * 22 + [-1.0] * 10  # 32 non-zero: Monte Carlo, against the exact binomial tail
    exact = sum(math.comb(32, j) for j in range(33) if abs(2 * j - 32) >= 12) / 2**32
    assert sign_flip_p(d, iterations=100000) == pytest.approx(exact, abs=0.005)


def test_paired_test_keeps_its_contract():
    a = {str(i): 0.0 for i in range(10)}
    d, p = paired_test(a, {**a, "0": 1.0, "1": 1.0, "2": 1.0})
    assert d == pytest.approx(0.3) and p == pytest.approx(2 / 8)


def test_compare_per_domain_a_minus_b():
    samples = []
    for i in range(12):
        samples += _item("a", f"x{i}", 4, 4, domain="x") + _item("b", f"x{i}", 0, 4, domain="x")
        samples += _item("a", f"y{i}", 2, 4, domain="y") + _item("b", f"y{i}", 2, 4, domain="y")
    samples += _item("b", "extra", 4, 4, domain="y")
    out = compare(samples, "a", "b", by="domain", resamples=500)
    assert list(out) == ["x", "y", "all"]
    assert out["x"].diff == 1.0 and out["x"].significant
    assert (
        out["y"].diff == 0.0 and not out["y"].significant and out["y"].items == 12 and out["y"].left_out == 1
    )
    assert out["all"].diff == pytest.approx(0.5) and out["all"].items == 24
    with pytest.raises(ValueError, match="'c' is not a model"):
        compare(samples, "a", "c")


# ------------------------------------------------------------------------------------------------ synergy


def test_merge_synergy_lists_only_groups_where_the_merge_beats_every_parent():
    samples = []
    for i in range(20):
        for model, passes in {"m": (4, 3 if i == 0 else 2, 3), "p": (2, 2, 4), "q": (2, 2, 0)}.items():
            for domain, c in zip(["big", "tiny", "split"], passes):
                samples += _item(model, f"{domain}{i}", c, 4, domain=domain)
    rows = merge_synergy(samples, "m", ["p", "q"], resamples=500)
    assert [r.group for r in rows] == ["big", "tiny"]  # "split": m beats q but not p
    big, tiny = rows
    assert big.merged == 1.0 and big.parents == {"p": 0.5, "q": 0.5} and big.items == 20
    assert big.vs["p"].diff == 0.5 and big.significant
    assert tiny.vs["p"].diff == pytest.approx(0.25 / 20) and not tiny.significant


# ------------------------------------------------------------------------------------------------ lengths


def test_length_table_by_domain_level_and_difficulty():
    samples = [
        _s("m", "a", True, domain="x", level=1, tokens=10, reasoning=4),
        _s("m", "a", True, domain="x", level=1, tokens=20, reasoning=6, sample=1, finish="length"),
        _s("m", "b", False, domain="y", level=2, tokens=60, reasoning=30),
        _s("m", "c", False, domain="y", level=None, tokens=90, reasoning=0),
    ]
    by_domain = length_table(samples, by="domain")["m"]
    assert by_domain["x"].output == 15 and by_domain["x"].reasoning == 5 and by_domain["x"].truncated == 0.5
    assert by_domain["y"].output == 75 and by_domain["all"].output == 45 and by_domain["all"].samples == 4
    by_level = length_table(samples, by="level")["m"]
    assert sorted(by_level) == ["1", "2", "all", "n/a"] and by_level["n/a"].output == 90
    by_diff = length_table(samples, by="difficulty", difficulty={"a": "hard", "b": "easy"})["m"]
    assert by_diff["hard"].output == 15 and by_diff["easy"].output == 60 and by_diff["n/a"].output == 90


def test_group_order():
    assert group_order(["10", "2", "all", "n/a", "1"]) == ["1", "2", "10", "n/a", "all"]
    assert group_order(["hard", "easy", "medium"]) == ["easy", "medium", "hard"]
    assert group_order(["SQL", "math", "all", "Code"]) == ["Code", "math", "SQL", "all"]
