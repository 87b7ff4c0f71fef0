"""The Branch-Merge claim: kept gains, gaps to the mixture, significance, compute and targets, against hand-computed
references on a synthetic evaluation; results.json's shape; the report section."""

import json

import numpy as np
import pytest
import yaml

from branchmerge.errors import BranchmergeError
from branchmerge.evaluate.claim import build_claim
from branchmerge.evaluate.claim_models import ModelInfo, check_models, load_models, total_compute
from branchmerge.evaluate.report import render_report
from branchmerge.evaluate.results import Results, read_results
from branchmerge.evaluate.stats import bootstrap_mean, compare, items_for_width, ratio_interval
from branchmerge.records import EvalSample

ITEMS = 20
# items passed per domain, one sample per item; a model passes items 0 .. k-1, so every difference is one-sided
# and the sign-flip p of k differing items is 2 / 2^k (significant from k = 6 on).
PASSES = {
    "student": {"add": 4, "sort": 10},
    "expert-add": {"add": 16, "sort": 6},
    "expert-sort": {"add": 2, "sort": 18},
    "mixture": {"add": 14, "sort": 16},
    "merge": {"add": 13, "sort": 15},  # keeps 9/12 of add's gain, 5/8 of sort's; 5 items over base on sort
    "merge-good": {"add": 15, "sort": 17},  # keeps 11/12 and 7/8; 80% overall against the mixture's 75%
}
MODELS = [
    ModelInfo(name="student", kind="base"),
    ModelInfo(
        name="expert-add",
        kind="expert",
        domain="add",
        parents=["student"],
        train_tokens=1000,
        loss_tokens=400,
        wall_s=10.0,
    ),
    ModelInfo(
        name="expert-sort",
        kind="expert",
        domain="sort",
        parents=["student"],
        train_tokens=1200,
        loss_tokens=500,
        wall_s=12.0,
    ),
    ModelInfo(
        name="mixture", kind="mixture", parents=["student"], train_tokens=2200, loss_tokens=900, wall_s=20.0
    ),
    ModelInfo(name="merge", kind="merge", parents=["expert-add", "expert-sort"], wall_s=1.5),
    ModelInfo(name="inter", kind="merge", parents=["expert-add", "expert-sort"], wall_s=2.0),  # not evaluated
    ModelInfo(name="merge-good", kind="merge", parents=["inter", "expert-sort"], wall_s=1.0),
]


def _samples(passes=PASSES):
    return [
        EvalSample(
            model=m,
            benchmark="b",
            item_id=f"{d}{i}",
            domain=d,
            sample=0,
            output="x",
            output_tokens=5,
            passed=i < k,
        )
        for m, by in passes.items()
        for d, k in by.items()
        for i in range(ITEMS)
    ]


@pytest.fixture(scope="module")
def claim():
    return build_claim(_samples(), MODELS, resamples=500)


def _kept(claim, merge):
    mc = next(mc for mc in claim.merges if mc.name == merge)
    return {k.domain: k for k in mc.kept}


def test_kept_gain_is_the_hand_computed_share(claim):
    kept = _kept(claim, "merge")
    assert kept["add"].share == pytest.approx((13 - 4) / (16 - 4))
    assert kept["sort"].share == pytest.approx((15 - 10) / (18 - 10))
    assert kept["add"].expert_gain == pytest.approx(12 / 20) and kept["add"].merge_gain == pytest.approx(
        9 / 20
    )
    good = _kept(claim, "merge-good")  # its experts are reached through the unevaluated merge "inter"
    assert good["add"].expert == "expert-add" and good["add"].share == pytest.approx(11 / 12)
    assert good["sort"].share == pytest.approx(7 / 8)
    assert all(k.lo <= k.share <= k.hi for k in [*kept.values(), *good.values()])


def test_significance_flags_are_those_of_the_paired_test(claim):
    samples = _samples()
    for model in ["expert-add", "expert-sort", "mixture", "merge", "merge-good"]:
        reference = compare(samples, model, "student", resamples=500)
        assert set(claim.vs_base[model]) == {"add", "sort", "all"}
        for d, c in reference.items():
            assert claim.vs_base[model][d] == c
    # merge on sort: 5 items better, none worse → exact sign-flip p = 2/2^5 = 0.0625, not significant
    assert claim.vs_base["merge"]["sort"].p_sign == pytest.approx(2 / 2**5)
    assert not claim.vs_base["merge"]["sort"].significant
    assert claim.vs_base["merge-good"]["sort"].significant  # 7 items: p = 2/2^7


def test_gap_to_the_mixture(claim):
    gaps = {mc.name: mc.vs_mixture["mixture"] for mc in claim.merges}
    assert gaps["merge"]["all"].diff == pytest.approx((28 - 30) / 40)
    assert gaps["merge"]["add"].diff == pytest.approx((13 - 14) / 20)
    assert gaps["merge-good"]["all"].diff == pytest.approx((32 - 30) / 40)
    assert gaps["merge-good"]["all"] == compare(_samples(), "merge-good", "mixture", resamples=500)["all"]


def test_targets_are_judged_from_the_numbers(claim):
    marks = {t.statement: t.holds for t in claim.targets}
    assert marks["each expert significantly beats student on its own domain"] is True
    assert marks["merge significantly beats student on every domain"] is False  # sort is not significant
    assert marks["merge keeps ≥ 70% of each expert's in-domain gain"] is False  # 62.5% of sort's
    assert marks["merge trails the mixture by ≤ 3 points over all items (or beats it)"] is False  # −5 points
    assert marks["merge-good significantly beats student on every domain"] is True
    assert marks["merge-good keeps ≥ 70% of each expert's in-domain gain"] is True
    assert marks["merge-good trails the mixture by ≤ 3 points over all items (or beats it)"] is True
    last = claim.targets[-1]
    assert last.holds is True and last.evidence == "merge-good"
    width = next(t for t in claim.targets if "interval" in t.statement)
    # 20 items at 20% and 50%: far wider than 10 points; the evidence says how many items would do
    assert width.holds is False and f"about {items_for_width(0.2, 0.1)} items" in width.evidence


def test_kept_gain_is_na_when_the_expert_did_not_gain():
    passes = {**PASSES, "expert-sort": {"add": 2, "sort": 10}}  # no better than the base on its own domain
    claim = build_claim(_samples(passes), MODELS, resamples=200)
    k = _kept(claim, "merge")["sort"]
    assert k.share is None and k.lo is None and "does not significantly beat student on sort" in k.reason
    assert k.expert_gain == 0.0  # reported, but never divided by
    assert _kept(claim, "merge")["add"].share == pytest.approx(9 / 12)
    marks = {t.statement: t.holds for t in claim.targets}
    assert marks["merge keeps ≥ 70% of each expert's in-domain gain"] is None  # cannot be judged
    assert marks["each expert significantly beats student on its own domain"] is False


def test_compute_sums_each_ancestor_once():
    models = check_models(MODELS)
    assert total_compute("expert-add", models).train_tokens == 1000  # the base's own training is not counted
    m = total_compute("merge", models)
    assert (m.train_tokens, m.loss_tokens, m.wall_s) == (2200, 900, pytest.approx(23.5))
    g = total_compute("merge-good", models)  # inter + expert-sort, expert-sort reached twice but counted once
    assert (g.train_tokens, g.wall_s) == (2200, pytest.approx(10 + 12 + 2 + 1))
    unknown = check_models(
        [*MODELS[:4], ModelInfo(name="m", kind="merge", parents=["expert-add", "mixture"])]
    )
    assert total_compute("m", unknown).wall_s is None  # the merge's own time was not recorded


def test_bad_descriptors_are_reported_together():
    bad = [
        ModelInfo(name="a", kind="base"),
        ModelInfo(name="b", kind="base"),
        ModelInfo(name="m", kind="merge", parents=["a", "ghost"]),
        ModelInfo(name="n", kind="merge"),
    ]
    with pytest.raises(ValueError) as e:
        check_models(bad)
    msg = str(e.value)
    assert "m.parents: 'ghost' is not a described model" in msg
    assert "n.parents: a merge needs" in msg and "more than one model of kind base (a, b)" in msg
    with pytest.raises(ValueError, match="x.parents: 'x' is its own ancestor"):
        check_models(
            [
                ModelInfo(name="x", kind="merge", parents=["y"]),
                ModelInfo(name="y", kind="merge", parents=["x"]),
            ]
        )


def test_share_interval_with_a_constant_expert_gain_is_the_bootstrap_of_the_merge_gain():
    rng = np.random.default_rng(3)
    merge = rng.integers(0, 2, 40).astype(float)
    lo, hi = ratio_interval(np.zeros(40), np.ones(40), merge, resamples=1000, seed=7)
    _, ref_lo, ref_hi = bootstrap_mean(merge.tolist(), resamples=1000, seed=7)
    assert (lo, hi) == pytest.approx((ref_lo, ref_hi))
    # an expert that mostly does not gain leaves the ratio unbounded
    assert ratio_interval(np.zeros(40), np.eye(1, 40)[0], merge, resamples=200) == (None, None)


def test_items_for_width():
    assert items_for_width(0.5, 0.10) == 385  # the textbook 1.96² · 0.25 / 0.05²
    assert items_for_width(0.0, 0.10) == items_for_width(0.05, 0.10) == 73  # clipped, never 0


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("claim")
    render_report(_samples(), out, baseline="student", models=MODELS, resamples=300, html=True)
    return out


def test_results_json_shape_and_values(report):
    raw = json.loads((report / "results.json").read_text())
    assert set(raw) == {"baseline", "models", "paired", "targets"} and raw["baseline"] == "student"
    r = read_results(report / "results.json")
    assert isinstance(r, Results) and set(r.models) == {m.name for m in MODELS}
    base = r.models["student"]
    assert base.kind == "base" and base.domains["add"].pass1 == 20.0 and base.domains["add"].items == ITEMS
    lo, hi = base.domains["sort"].ci95
    assert lo < 50.0 < hi and base.overall.pass1 == pytest.approx(35.0)
    e = r.models["expert-add"]
    assert (e.domain, e.parents, e.train_tokens) == ("add", ["student"], 1000)
    m = r.models["merge"]
    assert (m.train_tokens, m.wall_s, m.own.wall_s, m.own.train_tokens) == (2200, 23.5, 1.5, None)
    assert (
        m.kept_gain["expert-add"].share == pytest.approx(0.75)
        and m.kept_gain["expert-add"].expert_gain == 60.0
    )
    assert m.vs_mixture["mixture"]["all"].delta == pytest.approx(-5.0)
    assert r.models["inter"].domains == {} and r.models["inter"].overall is None  # described, not evaluated
    # every evaluated model but the baseline, per domain and over all items
    assert len(r.paired) == 5 * 3 and {p.against for p in r.paired} == {"student"}
    row = next(p for p in r.paired if (p.model, p.domain) == ("merge", "sort"))
    assert row.delta == pytest.approx(25.0) and row.p == pytest.approx(max(row.p_bootstrap, 2 / 2**5))
    assert row.significant is False
    assert [t.holds for t in r.targets][-1] is True


def test_results_json_is_validated_on_read(tmp_path):
    bad = tmp_path / "results.json"
    bad.write_text(
        json.dumps({"baseline": "b", "models": {"b": {"kind": "teacher"}}, "paired": [], "targets": []})
    )
    with pytest.raises(ValueError, match=r"results.json: models.b.kind"):
        read_results(bad)


def test_report_states_the_claim(report):
    md = (report / "report.md").read_text()
    section = md[md.index("## Branch-Merge claim") : md.index("## pass@k")]
    assert "| merge-good keeps ≥ 70% of each expert's in-domain gain | ✓ |" in section
    assert "| merge keeps ≥ 70% of each expert's in-domain gain | ✗ |" in section
    assert "| `expert-sort` | sort | +40.0 | +25.0 | 62.5% |" in section
    assert "| `merge-good` | merge | inter, expert-sort | ? | ? | 1.0 | 2,200 | 25.0 |" in section
    assert "`merge` against `mixture`: 1.00× the mixture's training tokens" in section
    html = (report / "report.html").read_text()
    assert "Branch-Merge claim" in html and "62.5%" in html


def test_report_without_descriptors_writes_no_results(tmp_path):
    render_report(_samples(), tmp_path, baseline="student", resamples=100, html=False)
    assert not (tmp_path / "results.json").exists()
    assert "Branch-Merge claim" not in (tmp_path / "report.md").read_text()


def test_report_command_with_models_file(tmp_path):
    from typer.testing import CliRunner

    from branchmerge.cli.main import app
    from branchmerge.records import write_jsonl

    write_jsonl(tmp_path / "s.jsonl", _samples())
    (tmp_path / "models.yaml").write_text(yaml.safe_dump([m.model_dump(exclude_none=True) for m in MODELS]))
    args = ["report", str(tmp_path / "s.jsonl"), "--out", str(tmp_path / "r"), "--baseline", "student"]
    res = CliRunner().invoke(app, [*args, "--models", str(tmp_path / "models.yaml"), "--no-html"])
    assert res.exit_code == 0, res.output
    r = read_results(tmp_path / "r" / "results.json")
    assert r.models["merge"].kept_gain["expert-sort"].share == pytest.approx(5 / 8)

    bad = [
        {"name": "student", "kind": "teacher"},
        {"name": "m", "kind": "merge", "parents": ["x"], "wall": 1},
    ]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    args[3] = str(tmp_path / "r2")
    res = CliRunner().invoke(app, [*args, "--models", str(tmp_path / "bad.yaml")])
    assert res.exit_code == 2
    assert "bad.yaml: [0].kind: Input should be 'base'" in res.output
    assert "bad.yaml: [1].wall: Extra inputs are not permitted" in res.output
    assert not (tmp_path / "r2").exists()  # refused before any output


def test_models_file_parents_are_checked(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps([{"name": "m", "kind": "merge", "parents": ["x"]}]))
    with pytest.raises(BranchmergeError, match=r"m.json: models: m.parents: 'x' is not a described model"):
        load_models(tmp_path / "m.json")


def test_an_expert_without_an_own_domain_has_no_kept_gain():
    passes = {**PASSES, "expert-teacher": {"add": 4, "sort": 10}}
    models = [*MODELS, ModelInfo(name="expert-teacher", kind="expert", parents=["student"])]
    models.append(ModelInfo(name="m3", kind="merge", parents=["expert-add", "expert-teacher"]))
    passes["m3"] = {"add": 13, "sort": 10}
    claim = build_claim(_samples(passes), models, resamples=200)
    kept = _kept(claim, "m3")
    assert kept["?"].share is None and kept["?"].reason == "expert-teacher has no evaluated own domain"
    first = claim.targets[0]
    assert first.holds is True and "expert-teacher" not in first.evidence  # judged on the domain experts


@pytest.mark.parametrize("p", [0.5, 0.2, 0.1])
def test_items_for_width_gives_a_bootstrap_interval_about_that_wide(p):
    n = items_for_width(p, 0.10)
    k = round(p * n)
    _, lo, hi = bootstrap_mean([1.0] * k + [0.0] * (n - k), resamples=2000)
    assert hi - lo == pytest.approx(0.10, abs=0.01)
    _, lo, hi = bootstrap_mean([1.0] * round(p * 60) + [0.0] * (60 - round(p * 60)), resamples=2000)
    assert hi - lo > 0.14  # the 60 items per domain of today's demo are far from it
