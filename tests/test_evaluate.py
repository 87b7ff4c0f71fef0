import math

import pytest

from branchmerge.evaluate import accuracy_table, evaluate_model, paired_test, wilson_interval
from branchmerge.evaluate.report import render_report
from branchmerge.records import EvalSample, Problem, read_jsonl


def _s(model: str, item: str, passed: bool, domain: str = "add", sample: int = 0) -> EvalSample:
    return EvalSample(
        model=model,
        benchmark="b",
        item_id=item,
        domain=domain,
        sample=sample,
        output="x",
        output_tokens=1,
        passed=passed,
    )


def test_wilson_interval_matches_hand_computation():
    lo, hi = wilson_interval(8, 10)
    # p=.8, n=10, z=1.96: centre=(.8+z²/2n)/(1+z²/n), half=z·sqrt(p(1-p)/n+z²/4n²)/(1+z²/n); known (0.490, 0.943)
    centre, half = (0.8 + 0.192080) / 1.384160, 1.96 * math.sqrt(0.016 + 0.009604) / 1.384160
    assert lo == pytest.approx(centre - half, abs=1e-6) and hi == pytest.approx(centre + half, abs=1e-6)
    assert (round(lo, 3), round(hi, 3)) == (0.49, 0.943)
    assert wilson_interval(0, 0) == (0.0, 0.0)
    assert wilson_interval(10, 10)[1] == 1.0


def test_paired_test_exact_enumeration():
    a = {str(i): 0.0 for i in range(10)}
    b = {**a, "0": 1.0, "1": 1.0, "2": 1.0}  # three wins, no losses
    d, p = paired_test(a, b)
    assert d == pytest.approx(0.3)
    assert p == pytest.approx(2 / 8)  # of 2^3 sign patterns, only all-plus and all-minus reach |3|
    assert paired_test(a, a) == (0.0, 1.0)
    d, p = paired_test(a, {**a, "0": 1.0, "1": -0.0})
    assert p == 1.0  # one win: both sign patterns reach it


def test_paired_test_monte_carlo_for_many_items():
    a = {str(i): 0.0 for i in range(40)}
    b = {str(i): 1.0 if i < 30 else 0.0 for i in range(40)}
    _, p = paired_test(a, b)
    assert p < 1e-3


def test_accuracy_table_and_report(tmp_path):
    samples = [
        _s("base", "1", False),
        _s("base", "2", True),
        _s("exp", "1", True),
        _s("exp", "2", True),
        _s("exp", "3", False, domain="sort"),
        _s("base", "3", False, domain="sort"),
    ]
    t = accuracy_table(samples)
    assert t["base"]["add"] == (0.5, 2) and t["exp"]["add"] == (1.0, 2) and t["exp"]["all"] == (2 / 3, 3)
    path = render_report(
        samples, tmp_path, baseline="base", stage_times=[("merge", "ran", 1.5)], notes=["hello"]
    )
    text = path.read_text()
    assert "| exp | 100.0 | 0.0 | 66.7 |" in text
    assert "| merge | ran | 1.5 |" in text and "- hello" in text
    png = (tmp_path / "accuracy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_evaluate_model_grades_and_resumes(tiny_model_dir, tmp_path):
    problems = [
        Problem(
            id=f"p{i}",
            domain="add",
            question=f"What is {i}+1?",
            reference=str(i + 1),
            grader={"type": "numeric"},
        )
        for i in range(3)
    ]
    out = tmp_path / "s.jsonl"
    first = evaluate_model(tiny_model_dir, problems[:2], out, n=2, max_tokens=8, show_progress=False)
    assert len(first) == 4 and all(not s.passed for s in first)  # a random model does not add
    assert all(s.output_tokens <= 8 for s in first)
    again = evaluate_model(tiny_model_dir, problems, out, n=2, max_tokens=8, show_progress=False)
    assert len(again) == 6 and len(read_jsonl(out, EvalSample)) == 6  # only the new item was run
