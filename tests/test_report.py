"""The report: Markdown and self-contained HTML with intervals, flags, synergy and figures; the `report` command."""

import json
import re

import pytest
from matplotlib.image import imread
from typer.testing import CliRunner

from branchmerge.cli.main import app
from branchmerge.evaluate.report import render_report
from branchmerge.records import EvalSample, Problem, write_jsonl

N, ITEMS = 4, 20
# passes out of N on every item of a domain:
#   alpha: the merge is perfect, its parents half right → synergy, significant; `a` beats `base`
#   beta:  everyone at 2/4 except the merge at 3/4 on one item → synergy on point estimates, not significant
#   gamma: the merge beats `b` but not `a` → no synergy
PASSES = {
    "base": {"alpha": 0, "beta": 2, "gamma": 2},
    "a": {"alpha": 2, "beta": 2, "gamma": 4},
    "b": {"alpha": 2, "beta": 2, "gamma": 0},
    "merged": {"alpha": 4, "beta": 2, "gamma": 3},
}


def _samples(n: int = N) -> list[EvalSample]:
    out = []
    for m, by_domain in PASSES.items():
        for d, c in by_domain.items():
            for i in range(ITEMS):
                c_item = 3 if (m, d, i) == ("merged", "beta", 0) else c
                level = 1 + i % 4
                for k in range(n):
                    out.append(
                        EvalSample(
                            model=m,
                            benchmark="mdr",
                            item_id=f"{d}{i}",
                            domain=d,
                            level=level,
                            sample=k,
                            output="x",
                            output_tokens=50 * level + 10 * list(PASSES).index(m),
                            reasoning_tokens=40 * level,
                            finish_reason="length" if level == 4 and k == 0 else "stop",
                            passed=k < c_item * n // N,
                        )
                    )
    return out


def _problems() -> list[Problem]:
    return [
        Problem(
            id=f"{d}{i}", domain=d, question="q", reference="r", difficulty=["easy", "medium", "hard"][i % 3]
        )
        for d in ["alpha", "beta", "gamma"]
        for i in range(ITEMS)
    ]


def _section(md: str, heading: str) -> str:
    start = md.index(heading)
    nxt = md.find("\n#", start + 1)
    return md[start : nxt if nxt != -1 else None]


def _rows(section: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip("|").split("|")]
        for line in section.splitlines()
        if line.startswith("| ")
    ]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    path = render_report(
        _samples(),
        out,
        baseline="base",
        merges={"merged": ["a", "b"]},
        problems=_problems(),
        stage_times=[("eval.a", "ran", 2.0)],
        notes=["a note"],
        title="t",
    )
    return out, path.read_text()


def test_report_writes_every_file(report):
    out, _ = report
    for name in ["report.md", "report.html", "accuracy.png", "pass_at_k.png", "lengths.png"]:
        assert (out / name).stat().st_size > 1000, name


def test_pngs_are_valid_images_of_sensible_size(report):
    out, _ = report
    for name in ["accuracy.png", "pass_at_k.png", "lengths.png"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        h, w, _ = imread(out / name).shape
        assert 500 <= w <= 2200 and 300 <= h <= 1400, (name, w, h)
        assert w / h < 5, (name, w, h)  # not a sliver


def test_html_is_self_contained(report):
    out, md = report
    html = (out / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "<link" not in html and "<script" not in html
    images = re.findall(r'<img src="([^"]*)"', html)
    assert len(images) == 3 and all(i.startswith("data:image/png;base64,") for i in images)
    # the same numbers as the Markdown: every table cell of report.md appears in the page
    assert "<strong>beats</strong> base" in html and "⚠" in html and "[+50.0, +50.0]" in html
    assert md.count("| ") > 20 and "<table>" in html


def test_pass1_table_and_its_intervals(report):
    _, md = report
    section = _section(md, "## pass@1 (%) per domain")
    rows = _rows(section)
    assert rows[0] == ["model", "alpha", "beta", "gamma", "all"]
    assert ["merged", "100.0", "51.2", "75.0", "75.4"] in rows
    ci = {r[0]: r[1:] for r in _rows(section.split("95% intervals")[1])[1:]}
    assert ci["base"][:3] == ["0.0–0.0", "50.0–50.0", "50.0–50.0"]  # every item alike: no width
    lo, hi = (float(x) for x in ci["base"][3].split("–"))
    assert lo < 33.3 < hi  # over all domains the items differ: an interval around 1/3
    assert "(4 samples per item)" in section and "![pass@1 per domain with 95% intervals](accuracy.png)" in md


def test_paired_comparisons_carry_intervals_and_flags(report):
    _, md = report
    section = _section(md, "## Paired comparisons against `base`")
    rows = {(r[0], r[1]): r[2:] for r in _rows(section)[1:]}
    assert (
        rows[("a", "alpha")][:2] == ["+50.0", "[+50.0, +50.0]"]
        and rows[("a", "alpha")][-1] == "**beats** base"
    )
    assert rows[("b", "gamma")][-1] == "**trails** base"
    assert rows[("b", "beta")] == ["+0.0", "[+0.0, +0.0]", "1", "1", "20", "⚠ not significant"]
    assert rows[("merged", "beta")][-1] == "⚠ not significant"  # ahead by 1.2 points, but noise
    assert ("base", "alpha") not in rows and len(rows) == 3 * 4
    # every claim in words carries its interval
    claims = [line for line in section.splitlines() if line.startswith("- ")]
    assert claims and all("95% CI [" in c and ("beats" in c or "trails" in c) for c in claims)
    assert "- `a` beats `base` in alpha by 50.0 pts (95% CI [+50.0, +50.0]" in section
    assert "- `b` trails `base` in gamma by 50.0 pts (95% CI [-50.0, -50.0]" in section
    assert not any("`merged` beats `base` in beta" in c for c in claims)


def test_synergy_table_lists_only_domains_where_the_merge_beats_both(report):
    _, md = report
    section = _section(md, "### `merged` against its parents")
    rows = _rows(section)
    assert rows[0][:5] == ["domain", "items", "merged (%)", "a (%)", "b (%)"]
    assert [r[0] for r in rows[1:]] == ["alpha", "beta"]  # not gamma: `a` is better there
    alpha, beta = rows[1], rows[2]
    assert alpha[2:5] == ["100.0", "50.0", "50.0"] and alpha[-1] == "synergy, significant"
    assert alpha[5].startswith("+50.0 [+50.0, +50.0] p=")
    assert beta[-1] == "⚠ not significant vs a, b"


def test_pass_at_k_and_length_tables(report):
    _, md = report
    rows = _rows(_section(md, "## pass@k"))
    assert rows[0] == ["model", "k=1", "k=2", "k=4"]
    # merged, pass@2 per item: alpha 1; beta 1 − C(2,2)/C(4,2) = 5/6 (one item at 3/4: 1); gamma 3/4 → 1
    assert ["merged", "75.4", f"{100 * (41 + 19 * 5 / 6) / 60:.1f}", "100.0"] in rows
    lengths = _section(md, "## Output length")
    assert "By level:" in lengths and "By difficulty:" in lengths
    by_level = _rows(lengths.split("By level:")[1].split("By difficulty:")[0])
    assert by_level[0] == ["model", "level 1", "level 2", "level 3", "level 4", "all", "truncated"]
    assert ["base", "50 / 40", "100 / 80", "150 / 120", "200 / 160", "125 / 100", "6%"] in by_level
    by_difficulty = _rows(lengths.split("By difficulty:")[1])
    assert by_difficulty[0][1:4] == ["difficulty easy", "difficulty medium", "difficulty hard"]
    assert "| eval.a | ran | 2.0 |" in md and "- a note" in md


def test_single_sample_report_explains_missing_curves_and_html_can_be_skipped(tmp_path):
    render_report(_samples(n=1), tmp_path, baseline="base", html=False, resamples=200)
    md = (tmp_path / "report.md").read_text()
    assert "No pass@k curves: some item has only one sample" in md
    assert not (tmp_path / "report.html").exists() and not (tmp_path / "pass_at_k.png").exists()
    assert "Merge synergy" not in md and "By difficulty:" not in md  # no merges, no problems given
    with pytest.raises(ValueError, match="no samples"):
        render_report([], tmp_path, baseline="base")
    with pytest.raises(ValueError, match="nope"):
        render_report(_samples(n=1), tmp_path, baseline="base", merges={"nope": ["a", "b"]})


def test_report_command(tmp_path):
    samples = tmp_path / "s.jsonl"
    write_jsonl(samples, _samples())
    out = tmp_path / "out"
    runner = CliRunner()
    args = [
        "report",
        str(samples),
        "--out",
        str(out),
        "--baseline",
        "base",
        "--merge",
        "merged=a,b",
        "--k",
        "2",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    md = (out / "report.md").read_text()
    assert "## Merge synergy" in md and "### `merged` against its parents `a`, `b`" in md
    assert _rows(_section(md, "## pass@k"))[0] == ["model", "k=1", "k=2"]
    assert (out / "report.html").exists()
    assert json.loads(result.output.strip().splitlines()[-1]) == ["a", "b", "base", "merged"]

    result = runner.invoke(app, [*args[:6], "--merge", "merged"])
    assert result.exit_code == 2 and "--merge: 'merged' is not MERGED=PARENT1,PARENT2" in result.output
    result = runner.invoke(app, [*args[:6], "--merge", "merged=a,zz"])
    assert result.exit_code == 2 and "zz not a model in the samples" in result.output
    result = runner.invoke(app, [*args[:4], "--baseline", "zz"])
    assert result.exit_code == 2 and "--baseline: 'zz' is not a model" in result.output
