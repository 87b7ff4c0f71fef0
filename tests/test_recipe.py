import json

import pytest
import yaml

from branchmerge.errors import BranchmergeError
from branchmerge.recipe.cache import StageCache, dir_fingerprint, fingerprint
from branchmerge.recipe.schema import load_recipe

MINIMAL = {
    "name": "t",
    "problems": {"domains": ["add"], "train_per_domain": 4, "eval_per_domain": 2},
    "teachers": [{"name": "tt", "checkpoint": "tinylab:teacher"}],
    "train": {"student": "tinylab:student"},
}


def _write(tmp_path, data, name="r.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def test_shipped_demo_recipe_validates():
    from branchmerge.cli.recipes import demo_recipe_path

    r = load_recipe(demo_recipe_path())
    assert r.problems.domains == ["add", "sort", "compare"]
    assert {"slerp-add-sort", "ties", "fusion-all"} <= set(r.merges)


def test_unknown_key_and_bad_values_are_all_reported_with_file_and_field(tmp_path):
    data = json.loads(json.dumps(MINIMAL))
    data["train"]["settings"] = {"max_stepz": 3, "method": "ppo"}
    data["problems"]["domains"] = ["add", "poetry"]
    p = _write(tmp_path, data)
    with pytest.raises(BranchmergeError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert f"{p}: train.settings.max_stepz: unknown key" in msg
    assert "train.settings.method" in msg
    assert "problems.domains" in msg and "poetry" in msg


def test_teacher_needs_exactly_one_source(tmp_path):
    data = json.loads(json.dumps(MINIMAL))
    data["teachers"] = [{"name": "x"}]
    with pytest.raises(BranchmergeError, match=r"teachers\[0\]: give exactly one"):
        load_recipe(_write(tmp_path, data))


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(BranchmergeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(BranchmergeError, match=r"bad.yaml:\d+: not valid YAML"):
        load_recipe(bad)


def test_overrides(tmp_path):
    r = load_recipe(_write(tmp_path, MINIMAL), ["train.settings.max_steps=7", "eval.n=3"])
    assert r.train.settings.max_steps == 7 and r.eval.n == 3
    with pytest.raises(BranchmergeError, match="KEY=VALUE"):
        load_recipe(_write(tmp_path, MINIMAL), ["train.settings.max_steps"])


def test_stage_cache_reuses_finished_and_retries_interrupted(tmp_path):
    from branchmerge.recipe.summaries import EvalSetSummary

    cache = StageCache(tmp_path)
    calls = []

    def work(w):
        calls.append(w)
        (w / "out.txt").write_text("x")
        return EvalSetSummary(set="s", items=1)

    assert not (tmp_path / "stages").exists()  # nothing is made before a stage runs (a dry run asks freely)
    assert not cache.is_done("s", "k1") and not cache.any_done("s")
    a = cache.run("s", "k1", work, EvalSetSummary)
    b = cache.run("s", "k1", work, EvalSetSummary)
    assert not a.reused and b.reused and len(calls) == 1 and b.summary == EvalSetSummary(set="s", items=1)
    assert (a.path / "out.txt").read_text() == "x" and a.path == cache.path_of("s", "k1")
    assert cache.is_done("s", "k1") and cache.any_done("s") and not cache.is_done("s", "k2")
    assert json.loads((a.path / "stage.json").read_text())["summary"] == {"set": "s", "items": 1}

    def crash(w):
        (w / "partial.txt").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        cache.run("s", "k2", crash, EvalSetSummary)
    assert not (tmp_path / "stages" / "s-k2").exists()  # never looks finished

    def resume(w):
        assert (w / "partial.txt").read_text() == "half"  # a resumable stage sees its own partial work
        return EvalSetSummary(set="s", items=0)

    assert not cache.run("s", "k2", resume, EvalSetSummary).reused


def test_typed_summaries_keep_the_stage_json_layout(tmp_path):
    """A branch without a curriculum writes no "stages" field (as before summaries were typed); a reward-model
    stage's summary is keyed by target; a stage.json that is not the stage's summary is refused by file."""
    from branchmerge.recipe.summaries import RewardFit, RewardModelsSummary, TrainSummary

    cache = StageCache(tmp_path)
    plain = TrainSummary(examples=3, steps=2, first_loss=1.5, final_loss=0.5, train_tokens=30)
    o = cache.run("train.x", "k", lambda w: plain, TrainSummary)
    written = json.loads((o.path / "stage.json").read_text())["summary"]
    assert written == {"examples": 3, "steps": 2, "first_loss": 1.5, "final_loss": 0.5, "train_tokens": 30}
    assert cache.run("train.x", "k", lambda w: plain, TrainSummary).summary == plain
    fits = RewardModelsSummary({"rv": RewardFit(train=4, heldout=1, skipped=0, mae=0.25, spearman=None)})
    o = cache.run("reward-models", "k", lambda w: fits, RewardModelsSummary)
    assert json.loads((o.path / "stage.json").read_text())["summary"] == {
        "rv": {"train": 4, "heldout": 1, "skipped": 0, "mae": 0.25, "spearman": None}
    }
    assert cache.run("reward-models", "k", lambda w: fits, RewardModelsSummary).summary.root["rv"].mae == 0.25
    with pytest.raises(BranchmergeError, match=r"train.x-k/stage.json: the summary is not what a train.x"):
        cache.run("train.x", "k", lambda w: fits, RewardModelsSummary)  # read back as another stage's shape
    (cache.path_of("train.z", "k")).mkdir()
    (cache.path_of("train.z", "k") / "stage.json").write_text(
        json.dumps({"seconds": 1.0, "summary": {"examples": 3, "stepz": 2}})
    )
    with pytest.raises(BranchmergeError, match=r"train.z-k/stage.json: the summary is not what a train.z"):
        cache.run("train.z", "k", lambda w: plain, TrainSummary)


def test_fingerprints(tmp_path):
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    (tmp_path / "config.json").write_text("{}")
    f1 = dir_fingerprint(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"1")
    assert dir_fingerprint(tmp_path) != f1


def test_teacher_pool_limits_and_prices_reach_the_client_config():
    from branchmerge.recipe.schema import TeacherSpec
    from branchmerge.recipe.stages import teacher_endpoint

    spec = TeacherSpec(
        name="kimi",
        base_url=["http://a/v1", "http://b/v1"],
        model="k2",
        requests_per_min=500,
        tokens_per_min=2e6,
        price_prompt=0.6,
        price_completion=2.5,
        extra_body={"reasoning_effort": "high"},
    )
    with teacher_endpoint(spec, None) as cfg:  # what the run hands the client
        pass
    assert cfg.urls == ["http://a/v1", "http://b/v1"] and cfg.requests_per_min == 500
    assert cfg.cost(1e6, 1e6) == pytest.approx(3.1) and cfg.extra_body == {"reasoning_effort": "high"}
    with pytest.raises(ValueError, match="requests_per_min"):
        TeacherSpec(name="t", base_url="http://a/v1", model="m", requests_per_min=0)


def test_process_section_names_its_steps_and_judge_by_field(tmp_path):
    data = json.loads(json.dumps(MINIMAL))
    data["process"] = {"steps": ["verify", "rv_kd"], "judge": "nobody"}
    with pytest.raises(BranchmergeError) as e:
        load_recipe(_write(tmp_path, data))
    assert "process.steps: 'rv_kd' is not a processor or preset" in str(e.value)
    data["process"] = {"steps": "adaptive-thinking", "judge": "nobody", "sample": {"rv": [2, 6]}}
    with pytest.raises(BranchmergeError, match=r"process.judge: 'nobody' is not a teacher of this recipe"):
        load_recipe(_write(tmp_path, data))
    data["process"]["judge"] = "tt"
    r = load_recipe(_write(tmp_path, data))
    assert r.process.steps == ["verify", "dedup", "decontaminate", "rv_cd", "sample"]


def test_process_stage_serves_the_judge_and_the_student(tmp_path):
    """The tiny teacher as judge cannot write <score>N</score>: every RV/CD verdict is a recorded failure and no
    trace gets a score; the student's pass rate labels every problem."""
    from branchmerge.recipe import stages
    from branchmerge.recipe.schema import ProcessSpec, TeacherSpec
    from branchmerge.records import Trace, Verdict, read_jsonl, write_jsonl
    from branchmerge.tinylab.domains import generate_problems
    from branchmerge.tinylab.weights import student_dir, teacher_dir

    problems = generate_problems("add", 3, seed=5, levels=(1,))
    traces = [
        Trace(problem_id=p.id, teacher="x", model="m", sample=0, temperature=0.6, reasoning="r", answer=a)
        for p in problems
        for a in (p.reference, "0")
    ]
    write_jsonl(tmp_path / "traces.jsonl", traces)
    spec = ProcessSpec.model_validate(
        {
            "steps": ["verify", "difficulty", "rv_cd"],
            "difficulty": {"method": "student", "k": 2, "max_tokens": 64},
        }
    )
    spec.judging.max_tokens = 32
    judge = (TeacherSpec(name="tiny", checkpoint="tinylab:teacher"), teacher_dir())
    work = tmp_path / "work"
    work.mkdir()
    s = stages.process_stage(problems, [tmp_path / "traces.jsonl"], spec, judge, student_dir(), work, False)
    assert s.traces == 6 and s.kept == sum(p.reference != "0" for p in problems)
    kept = read_jsonl(work / "processed.jsonl", Trace)
    assert all(t.verified and t.difficulty in ("easy", "medium", "hard") for t in kept)
    assert all(t.rv is None and t.cd is None for t in kept)
    assert s.steps["rv_cd"].marked == {
        f"no {x} score (why: 03-rv_cd.verdicts.jsonl)": len(kept) for x in ("rv", "cd")
    }
    verdicts = read_jsonl(work / "processed.steps" / "03-rv_cd.verdicts.jsonl", Verdict)
    assert len(verdicts) == 2 * len(kept) and all(
        v.value is None and v.error and v.judge == "tiny" for v in verdicts
    )
    assert len(read_jsonl(work / "processed.steps" / "02-difficulty.student.jsonl", Trace)) == 2 * len(
        problems
    )


def _two_teachers(tmp_path, **train):
    data = json.loads(json.dumps(MINIMAL))
    data["teachers"] = [
        {"name": "tt", "checkpoint": "tinylab:teacher"},
        {"name": "uu", "checkpoint": "tinylab:teacher"},
    ]
    data["train"].update(train)
    return data


def test_experts_and_curriculum_are_validated_by_field(tmp_path):
    data = _two_teachers(
        tmp_path,
        experts="model",
        mixture_budget="double",
        curriculum=[
            {"name": "medium", "where": {"level": 3}},
            {"name": "hard", "epochs": 1, "max_steps": 2},
            {"name": "x", "settings": {"batch_sise": 2}},
        ],
    )
    with pytest.raises(BranchmergeError) as e:
        load_recipe(_write(tmp_path, data))
    msg = str(e.value)
    assert "train.experts: 'model' is not an expert split (known: domain, teacher, none)" in msg
    assert "train.mixture_budget: 'double' is not a mixture budget (known: sum, same)" in msg
    assert "train.curriculum[0].where: ['level'] not a field of an SFT example" in msg
    assert "train.curriculum[1]: give 'epochs' or 'max_steps', not both" in msg
    assert "train.curriculum[2].settings: ['batch_sise'] not an SFT setting" in msg
    with pytest.raises(BranchmergeError, match="train.curriculum: give at least one stage"):
        load_recipe(_write(tmp_path, _two_teachers(tmp_path, curriculum=[])))
    r = load_recipe(
        _write(
            tmp_path,
            _two_teachers(
                tmp_path, experts="teacher", curriculum=[{"name": "m", "where": {"difficulty": "medium"}}]
            ),
        )
    )
    assert r.train.experts == "teacher" and r.train.curriculum is not None
    assert r.train.curriculum[0].where == {"difficulty": ["medium"]}
    assert load_recipe(_write(tmp_path, MINIMAL)).train.curriculum is None


def test_teacher_experts_are_model_names_merges_can_use(tmp_path):
    from branchmerge.recipe.resolve import model_names, preflight

    data = _two_teachers(tmp_path, experts="teacher")
    data["merges"] = {
        "m": {
            "merge_method": "slerp",
            "base_model": "expert-tt",
            "models": [{"model": "expert-tt"}, {"model": "expert-uu"}],
            "parameters": {"t": 0.5},
        }
    }
    r = load_recipe(_write(tmp_path, data))
    assert model_names(r) == ["student", "expert-tt", "expert-uu", "mixture"]
    preflight(r, tmp_path)
    data["merges"]["m"]["models"][1]["model"] = "expert-add"
    with pytest.raises(BranchmergeError, match=r"merges.m.models\[1\].model: 'expert-add' is not a model"):
        preflight(load_recipe(_write(tmp_path, data)), tmp_path)


def _sft(i, domain, teacher, difficulty):
    from branchmerge.records import SFTExample

    return SFTExample(
        messages=[
            {"role": "user", "content": "1+1?"},
            {"role": "assistant", "content": f"<think>\n{i}\n</think>\n\n2"},
        ],
        domain=domain,
        difficulty=difficulty,
        num_tokens=12,
        problem_id=f"p{i}",
        teacher=teacher,
    )


def test_branch_plans_and_stage_keys(tmp_path):
    """Domain experts without a curriculum keep the keys earlier versions gave them (old runs are reused);
    teacher experts and curricula get keys of their own."""
    from branchmerge.recipe.keys import train_key
    from branchmerge.recipe.resolve import branch_plans, model_names

    examples = [
        _sft(i, "add", t, d) for i, (t, d) in enumerate([("tt", "medium"), ("uu", "hard"), ("tt+rw", "hard")])
    ]
    by_domain = load_recipe(_write(tmp_path, MINIMAL))
    plans = branch_plans(by_domain, examples)
    assert [p.name for p in plans] == model_names(by_domain)[1:] == ["expert-add", "mixture"]
    s = by_domain.train.settings
    mix = s.model_copy(update={"max_steps": s.max_steps})  # one domain: "sum" is one expert's steps
    assert train_key("S", "F", plans[0]) == fingerprint("train", "S", "F", s.model_dump(), ["add"])
    assert train_key("S", "F", plans[1]) == fingerprint("train", "S", "F", mix.model_dump(), None)

    by_teacher = load_recipe(_write(tmp_path, _two_teachers(tmp_path, experts="teacher")))
    t_plans = branch_plans(by_teacher, examples)
    assert [(p.name, p.where) for p in t_plans] == [
        ("expert-tt", {"teacher": ["tt", "tt+rw"]}),
        ("expert-uu", {"teacher": ["uu"]}),
        ("mixture", {}),
    ]
    stages = [
        {"name": "medium", "where": {"difficulty": "medium"}},
        {"name": "hard", "where": {"difficulty": "hard"}},
    ]
    curr = load_recipe(
        _write(tmp_path, {**MINIMAL, "train": {"student": "tinylab:student", "curriculum": stages}})
    )
    c_plans = branch_plans(curr, examples)
    keys = {train_key("S", "F", p) for p in [*plans, *t_plans, *c_plans]}
    assert len(keys) == len(plans) + len(t_plans) + len(c_plans)
    uu_only = [e for e in examples if e.teacher == "uu"]
    with pytest.raises(BranchmergeError, match="expert-tt: no SFT examples with teacher=tt"):
        branch_plans(by_teacher, uu_only)


def test_train_stage_runs_a_curriculum_branch(tmp_path, tiny_model_dir):
    from branchmerge.recipe import stages as recipe_stages
    from branchmerge.recipe.resolve import branch_plans
    from branchmerge.records import write_jsonl

    examples = [
        _sft(i, "add", t, d)
        for i, (t, d) in enumerate([("tt", "medium"), ("uu", "hard"), ("tt", "hard"), ("uu", "medium")])
    ]
    write_jsonl(tmp_path / "sft.jsonl", examples)
    stages = [
        {"name": "medium", "where": {"difficulty": "medium"}},
        {"name": "hard", "where": {"difficulty": "hard"}},
    ]
    train = {
        "student": "tinylab:student",
        "experts": "teacher",
        "curriculum": stages,
        "settings": {"max_steps": 1, "batch_size": 2},
    }
    r = load_recipe(_write(tmp_path, {**_two_teachers(tmp_path), "train": train}))
    plan = branch_plans(r, examples)[0]  # expert-tt: one medium, then one hard example
    work = tmp_path / "work"
    summary = recipe_stages.train_stage(tmp_path / "sft.jsonl", tiny_model_dir, plan, work, False)
    assert [(s.name, s.examples, s.steps) for s in summary.stages or []] == [
        ("medium", 1, 1),
        ("hard", 1, 1),
    ]
    assert summary.steps == 2 and summary.examples == 2
    assert (work / "model" / "model.safetensors").exists() and (work / "model.stages" / "02-hard").is_dir()
