"""merge-search: spec validation, sampled spaces, recorded scores checked by hand, resume, Pareto front."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.trial import FixedTrial, TrialState
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from branchmerge.cli.main import app
from branchmerge.errors import BranchmergeError
from branchmerge.merge import load_merge_config, run_merge
from branchmerge.merge.config import load_merge_configs
from branchmerge.merge.search import STUDY, TrialRecord, search_merges
from branchmerge.merge.search_space import suggest
from branchmerge.merge.search_spec import load_search_spec, parse_search_spec
from branchmerge.records import SFTExample, read_jsonl, write_jsonl
from branchmerge.tinylab.domains import generate_problems
from branchmerge.tinylab.weights import student_dir, teacher_dir

DOMAINS = ("add", "sort")


@pytest.fixture(autouse=True)
def quiet_optuna():
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials are asserted on, not logged
    yield
    optuna.logging.set_verbosity(before)


@pytest.fixture(scope="module")
def experts(make_checkpoint) -> tuple[str, str, str]:
    return tuple(str(make_checkpoint(seed=s)) for s in (21, 22, 23))  # type: ignore[return-value]


@pytest.fixture(scope="module")
def dev(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("dev")
    files = {}
    for d in DOMAINS:
        rows = [
            SFTExample(
                messages=[
                    {"role": "user", "content": p.question},
                    {
                        "role": "assistant",
                        "content": f"<think>\n{p.meta['solution']}\n</think>\n\n{p.reference}",
                    },
                ],
                domain=d,
                num_tokens=0,
                problem_id=p.id,
                teacher="t",
            )
            for p in generate_problems(d, 3, seed=5)
        ]
        files[d] = str(folder / f"dev-{d}.jsonl")
        write_jsonl(files[d], rows)
    return files


def slerp_spec(a: str, b: str, dev: dict[str, str], t: object, **extra: object) -> dict:
    template = {"merge_method": "slerp", "base_model": a, "models": [{"model": a}, {"model": b}]}
    return {
        "template": template | {"parameters": {"t": t}},
        "objective": {"kind": "loss", "dev": dev, "batch_size": 2},
        **extra,
    }


def hand_loss(model_dir: str | Path, dev_file: str) -> float:
    """Mean next-token NLL over assistant tokens, one example at a time, in float64."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    total, n = 0.0, 0
    for ex in read_jsonl(dev_file, SFTExample):
        enc = tok.apply_chat_template(
            ex.messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids, mask = enc["input_ids"], enc["assistant_masks"]
        # the mask is exactly the assistant turn and its end token
        assert tok.decode([i for i, m in zip(ids, mask) if m]) == ex.messages[1]["content"] + "<|im_end|>"
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
        for p in range(1, len(ids)):
            if mask[p]:
                total -= float(logp[p - 1, ids[p]])
                n += 1
    return total / n


def rows(out: Path) -> list[TrialRecord]:
    return read_jsonl(out / "trials.jsonl", TrialRecord)


# --- the spec ------------------------------------------------------------------------------------------


def test_spec_errors_name_the_file_and_field(tmp_path, experts, dev):
    a, b, _ = experts
    path = tmp_path / "spec.yaml"
    bad = slerp_spec(a, b, dev, {"low": 0.9, "high": 0.1})
    bad["template"]["models"][1]["parameters"] = {"weight": {"choices": []}}
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(BranchmergeError) as e:
        load_search_spec(path)
    lines = str(e.value).splitlines()
    assert f"{path}: template.parameters.t: low (0.9) must be below high (0.1)" in lines
    assert any(line.startswith(f"{path}: template.models[1].parameters.weight.choices:") for line in lines)

    with pytest.raises(
        BranchmergeError, match=r"spec: objective\.loss\.max_examples: .*greater than or equal"
    ):
        parse_search_spec(
            slerp_spec(a, b, dev, 0.5) | {"objective": {"kind": "loss", "dev": dev, "max_examples": 0}},
            "spec",
        )
    with pytest.raises(BranchmergeError, match=r"spec: template\.models: give either 'order'"):
        parse_search_spec(
            slerp_spec(a, b, dev, 0.5)
            | {"template": {"merge_method": "slerp", "order": [a, b], "models": []}},
            "spec",
        )
    with pytest.raises(
        BranchmergeError, match=r"spec: template\.parameters\.t\[1\]: a gradient point must be"
    ):
        parse_search_spec(slerp_spec(a, b, dev, [0, {"gradient": 3, "low": 0, "high": 1}]), "spec")


def test_disk_checks_run_before_any_merge_and_report_everything(tmp_path, experts, dev):
    a, b, _ = experts
    ties = {
        "merge_method": "ties",
        "base_model": a,
        "models": [{"model": b, "parameters": {"weight": 1.0, "density": {"low": 0.5, "high": 1.5}}}],
    }
    spec = slerp_spec(a, b, dev | {"sort": str(tmp_path / "nope.jsonl")}, 0.5) | {"template": ties}
    with pytest.raises(BranchmergeError) as e:
        search_merges(spec, tmp_path / "out", show_progress=False)
    lines = str(e.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(
        "search spec: template: models[0].parameters.density: 'density' must be between 0.0 and 1.0, got 1.5"
    )
    assert lines[1] == f"search spec: objective.dev.sort: {tmp_path / 'nope.jsonl'}: file not found"
    assert not (tmp_path / "out").exists()


def test_sampled_values_respect_their_spaces(experts, dev):
    a, b, _ = experts
    t = [
        {"filter": "embed_tokens", "value": 1},
        {"filter": "mlp", "value": [0, {"low": 0.1, "high": 0.2}, 1]},
        {"value": {"gradient": 4, "low": 0.25, "high": 0.75}},
    ]
    spec = slerp_spec(a, b, dev, t)
    spec["template"]["parameters"]["extra_int"] = {"low": 2, "high": 8, "step": 2}
    spec["template"]["parameters"]["extra_log"] = {"low": 1e-3, "high": 1.0, "log": True}
    spec["template"]["parameters"]["extra_choice"] = {"choices": [[0, 1], [1, 0], 0.5]}
    template = parse_search_spec(spec).parsed_template()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(40):
        trial = study.ask()
        config = template.fill(lambda slot, trial=trial: suggest(trial, slot))
        assert isinstance(config, dict)
        p = config["parameters"]
        assert p["t"][0] == {"filter": "embed_tokens", "value": 1}
        mlp = p["t"][1]["value"]
        assert mlp[0] == 0 and mlp[2] == 1 and 0.1 <= mlp[1] <= 0.2
        grad = p["t"][2]["value"]
        assert len(grad) == 4 and all(0.25 <= v <= 0.75 for v in grad)
        assert p["extra_int"] in (2, 4, 6, 8) and isinstance(p["extra_int"], int)
        assert 1e-3 <= p["extra_log"] <= 1.0
        assert p["extra_choice"] in ([0, 1], [1, 0], 0.5)
        study.tell(trial, 0.0)


def test_order_is_a_permutation_and_builds_named_steps(experts, dev):
    a, b, c = experts
    spec = slerp_spec(a, b, dev, 0.5) | {
        "template": {"merge_method": "arcee_fusion", "order": [a, b, c], "parameters": {"lambda": 0.5}}
    }
    template = parse_search_spec(spec).parsed_template()
    order = template.order
    assert order is not None
    seen = set()
    for codes in itertools.product(range(3), range(2)):
        seen.add(tuple(suggest(FixedTrial({"order@0": codes[0], "order@1": codes[1]}), order)))
    assert seen == set(itertools.permutations([a, b, c]))

    steps = template.fill(lambda slot: [c, a, b] if slot is order else None)
    assert steps == [
        {
            "name": "step1",
            "merge_method": "arcee_fusion",
            "base_model": c,
            "models": [{"model": c}, {"model": a}],
            "parameters": {"lambda": 0.5},
        },
        {
            "name": "step2",
            "merge_method": "arcee_fusion",
            "base_model": "step1",
            "models": [{"model": "step1"}, {"model": b}],
            "parameters": {"lambda": 0.5},
        },
    ]


# --- running searches ----------------------------------------------------------------------------------


def test_trials_record_the_true_loss_and_a_rerun_resumes(tmp_path, experts, dev):
    a, b, _ = experts
    t = [{"filter": "embed_tokens", "value": 1}, {"value": {"gradient": 3, "low": 0.2, "high": 0.8}}]
    spec = slerp_spec(a, b, dev, t, trials=2, seed=3)
    out = tmp_path / "out"
    first = search_merges(spec, out, show_progress=False)

    recorded = rows(out)
    assert [r.trial for r in recorded] == [0, 1] == [r.trial for r in first.trials]
    for r in recorded:
        points = r.params["parameters.t[1].value"]
        assert r.config["parameters"]["t"] == [{"filter": "embed_tokens", "value": 1}, {"value": points}]
        assert len(points) == 3 and all(0.2 <= v <= 0.8 for v in points)
        assert r.mean == pytest.approx(sum(r.scores.values()) / 2) and r.seconds > 0
    assert not any((out / "trials").iterdir())  # merged weights deleted (keep: none)

    # the recorded scores are the loss of the recorded config, merged again and scored by hand
    run_merge(recorded[1].config, tmp_path / "again", show_progress=False)
    for d in DOMAINS:
        assert recorded[1].scores[d] == pytest.approx(hand_loss(tmp_path / "again", dev[d]), rel=1e-5)
        assert first.baselines[a][d] == pytest.approx(hand_loss(a, dev[d]), rel=1e-5)

    second = search_merges(spec, out, trials=4, show_progress=False)
    again = rows(out)
    assert [r.trial for r in again] == [0, 1, 2, 3]
    assert again[:2] == recorded  # finished trials are not rerun
    assert len({json.dumps(r.params) for r in again}) == 4  # the reseeded sampler does not replay its draws
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{out / 'study.db'}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    assert second.baselines == first.baselines

    # the Pareto front: no trial dominates a front member, and every other trial is dominated by one
    def dominates(x: TrialRecord, y: TrialRecord) -> bool:
        return all(x.scores[d] <= y.scores[d] for d in DOMAINS) and x.scores != y.scores

    front = {r.trial for r in second.pareto}
    assert front
    for p in second.pareto:
        assert not any(dominates(r, p) for r in second.trials)
    for r in second.trials:
        if r.trial not in front:
            assert any(dominates(p, r) for p in second.pareto)
    for d in DOMAINS:
        assert second.best_by_domain[d].scores[d] == min(r.scores[d] for r in second.trials)

    best = second.best
    assert best is not None and best.mean == min(r.mean for r in second.trials)
    loaded = load_merge_config(out / "best.yaml")
    assert loaded.model_dump(exclude_none=True) == best.config


def test_a_killed_trial_is_failed_and_retried_with_its_parameters(tmp_path, experts, dev):
    a, b, _ = experts
    out = tmp_path / "out"
    spec = slerp_spec(a, b, dev, {"low": 0.0, "high": 1.0}, trials=1, keep="best")
    search_merges(spec, out, show_progress=False)
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{out / 'study.db'}")
    killed = study.ask(fixed_distributions=study.trials[0].distributions)  # left RUNNING, as by a kill -9
    (out / "trials" / f"{killed.number:04d}").mkdir()  # and its half-written folder

    result = search_merges(spec, out, trials=2, show_progress=False)
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{out / 'study.db'}")
    assert study.trials[killed.number].state == TrialState.FAIL
    retried = study.trials[-1]
    assert retried.state == TrialState.COMPLETE and retried.params == killed.params
    assert [r.trial for r in rows(out)] == [0, retried.number]
    assert result.failed == {killed.number: "killed; retried"}
    # keep: best leaves exactly the best trial's weights
    assert result.best is not None
    assert sorted(p.name for p in (out / "trials").iterdir()) == [f"{result.best.trial:04d}"]
    assert result.best.model_dir and Path(result.best.model_dir, "config.json").is_file()


def test_a_point_the_merge_refuses_fails_only_its_trial(tmp_path, experts, dev):
    a, b, _ = experts
    template = {
        "merge_method": "linear",
        "models": [
            {"model": a, "parameters": {"weight": {"low": -2.0, "high": 0.0}}},
            {"model": b, "parameters": {"weight": 1}},
        ],
    }
    spec = slerp_spec(a, b, dev, 0.5) | {"template": template, "trials": 2, "baselines": False}
    out = tmp_path / "out"
    out.mkdir()
    study = optuna.create_study(
        storage=f"sqlite:///{out / 'study.db'}", study_name=STUDY, directions=["minimize"] * 2
    )
    study.enqueue_trial({"models[0].parameters.weight": -1.0})  # -1 + 1 = 0: normalize would divide by 0

    result = search_merges(spec, out, show_progress=False)
    assert list(result.failed) == [0] and "weights sum to 0" in result.failed[0]
    assert [r.trial for r in result.trials] == [1] == [r.trial for r in rows(out)]
    assert -2.0 <= result.trials[0].params["models[0].parameters.weight"] <= 0.0
    assert not (out / "trials" / "0000").exists()

    topped_up = search_merges(spec, out, show_progress=False)  # the failed trial's place is filled again
    assert len(topped_up.trials) == 2 and list(topped_up.failed) == [0]


def test_order_search_runs_sequences_and_writes_a_multi_document_best(tmp_path, experts, dev):
    a, b, c = experts
    spec = slerp_spec(a, b, dev, 0.5) | {
        "template": {
            "merge_method": "arcee_fusion",
            "order": [a, b, c],
            "parameters": {"lambda": {"low": 0.0, "high": 1.0}},
        },
        "trials": 2,
        "baselines": False,
    }
    out = tmp_path / "out"
    result = search_merges(spec, out, show_progress=False)
    for r in result.trials:
        order = r.params["order"]
        assert sorted(order) == sorted([a, b, c])
        assert isinstance(r.config, list) and [s["models"][1]["model"] for s in r.config] == order[1:]
        assert r.config[0]["base_model"] == order[0] and r.config[1]["base_model"] == "step1"
    assert result.baselines == {}
    steps = load_merge_configs(out / "best.yaml")
    assert result.best is not None
    assert [s.model_dump(exclude_none=True) for s in steps] == result.best.config

    run_merge(result.trials[0].config, tmp_path / "again", show_progress=False)
    for d in DOMAINS:
        assert result.trials[0].scores[d] == pytest.approx(hand_loss(tmp_path / "again", dev[d]), rel=1e-5)


def test_eval_objective_scores_accuracy(tmp_path):
    student, teacher = str(student_dir()), str(teacher_dir())
    problems = {}
    for d in DOMAINS:
        problems[d] = str(tmp_path / f"eval-{d}.jsonl")
        write_jsonl(problems[d], generate_problems(d, 4, seed=99, levels=(1, 2)))
    spec = {
        "template": {
            "merge_method": "slerp",
            "base_model": student,
            "models": [{"model": student}, {"model": teacher}],
            "parameters": {"t": {"choices": [0.0, 1.0]}},
        },
        "objective": {"kind": "eval", "problems": problems, "max_tokens": 160},
        "trials": 2,
    }
    result = search_merges(spec, tmp_path / "out", show_progress=False)
    assert result.direction == "maximize"
    assert result.baselines[teacher] != result.baselines[student]
    for r in result.trials:  # SLERP at t = 0 / 1 is the base / the other model, bit for bit
        same_as = student if r.params["parameters.t"] == 0.0 else teacher
        assert r.scores == result.baselines[same_as]


def test_cli_prints_the_tables_and_rejects_bad_specs(tmp_path, experts, dev):
    a, b, _ = experts
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(slerp_spec(a, b, dev, {"low": 0.0, "high": 1.0}, trials=1)))
    result = CliRunner().invoke(app, ["merge-search", str(spec), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    for title in ("Input models, unmerged", "Best trial per domain", "Pareto front"):
        assert title in result.output
    assert json.loads((tmp_path / "out" / "trials.jsonl").read_text().splitlines()[0])["trial"] == 0

    spec.write_text(yaml.safe_dump(slerp_spec(a, b, dev, {"low": 0.0, "hi": 1.0})))
    result = CliRunner().invoke(app, ["merge-search", str(spec), "--out", str(tmp_path / "out2")])
    assert result.exit_code == 2 and "template.parameters.t.hi" in result.output
    assert "Traceback" not in result.output
