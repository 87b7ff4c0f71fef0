"""Branch experts (by domain or teacher) and the mixture baseline: plans, budgets, a train-then-merge run."""

import pytest
import torch
import yaml
from safetensors.torch import load_file

from branchmerge.errors import BranchmergeError
from branchmerge.records import SFTExample
from branchmerge.train import SFTSettings
from branchmerge.train.branches import BranchPlan, plan_branches, train_branches
from branchmerge.train.curriculum import CurriculumResult, CurriculumStage

SETTINGS = SFTSettings(max_steps=4, batch_size=2, learning_rate=3e-3, seed=11, max_length=512)


def _ex(i, domain, teacher, difficulty=None, text="What is 1+1?"):
    return SFTExample(
        messages=[
            {"role": "user", "content": text},
            {"role": "assistant", "content": f"<think>\n1+1=2 ({i})\n</think>\n\n2"},
        ],
        domain=domain,
        difficulty=difficulty,
        num_tokens=20,
        problem_id=f"p{i}",
        teacher=teacher,
    )


@pytest.fixture
def examples():
    # teacher a: 3 originals + 1 rewrite (a+rw); teacher b: 2; domains add/sort across both
    rows = [("add", "a"), ("sort", "a"), ("add", "a+rw"), ("add", "b"), ("sort", "b"), ("sort", "a")]
    diff = ["medium", "hard", "medium", "hard", "medium", "hard"]
    return [_ex(i, d, t, diff[i]) for i, (d, t) in enumerate(rows)]


def test_by_teacher_one_expert_per_teacher_and_the_mixture_budgets(examples):
    plans = plan_branches(examples, by="teacher", settings=SETTINGS)
    assert [(p.name, p.where) for p in plans] == [
        ("expert-a", {"teacher": ["a", "a+rw"]}),  # a rewrite counts for the teacher it rewrote
        ("expert-b", {"teacher": ["b"]}),
        ("mixture", {}),
    ]
    assert {p.settings.seed for p in plans} == {11}
    assert [p.settings.max_steps for p in plans] == [4, 4, 8]  # "sum": the experts' total
    same = plan_branches(examples, by="teacher", budget="same", settings=SETTINGS)
    assert [p.settings.max_steps for p in same] == [4, 4, 4]
    assert [p.name for p in plan_branches(examples, mixture=False, settings=SETTINGS)] == [
        "expert-add",
        "expert-sort",
    ]
    # experts in the order asked for; a group without examples is an error naming it, before any training
    assert [p.name for p in plan_branches(examples, "teacher", groups=["b", "a"])][:2] == [
        "expert-b",
        "expert-a",
    ]
    with pytest.raises(BranchmergeError, match=r"expert-c: no SFT examples with teacher=c \(found: a, b\)"):
        plan_branches(examples, "teacher", groups=["a", "c"])


def test_curriculum_steps_are_resolved_per_branch_and_budgeted_per_stage(examples):
    stages = [
        CurriculumStage(name="medium", where={"difficulty": "medium"}, epochs=2),
        CurriculumStage(name="hard", where={"difficulty": "hard"}, max_steps=5),
    ]
    plans = plan_branches(examples, "domain", settings=SETTINGS, curriculum=stages)
    steps = {p.name: [(s.name, s.max_steps, s.epochs) for s in p.curriculum or []] for p in plans}
    # add: 2 medium -> ceil(2 * 2 epochs / batch 2) = 2 steps; sort: 1 medium -> 1 step; hard: 5 steps each
    assert steps == {
        "expert-add": [("medium", 2, None), ("hard", 5, None)],
        "expert-sort": [("medium", 1, None), ("hard", 5, None)],
        "mixture": [("medium", 3, None), ("hard", 10, None)],
    }
    same = plan_branches(examples, "domain", budget="same", settings=SETTINGS, curriculum=stages)
    assert [s.max_steps for s in same[-1].curriculum or []] == [2, 5]  # the longest expert's
    only_hard = [e for e in examples if e.difficulty == "hard" or e.domain == "sort"]
    with pytest.raises(BranchmergeError, match=r"expert-add: stage 1 'medium' \(difficulty=medium\): no SFT"):
        plan_branches(only_hard, "domain", settings=SETTINGS, curriculum=stages)


def test_bad_split_and_budget_are_errors(examples):
    with pytest.raises(BranchmergeError, match="not an expert split"):
        plan_branches(examples, by="model")  # type: ignore[arg-type]
    with pytest.raises(BranchmergeError, match="not a budget"):
        plan_branches(examples, budget="double")  # type: ignore[arg-type]


def test_two_experts_train_from_one_base_and_merge_into_a_loadable_model(examples, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from branchmerge.merge import run_merge

    plans = plan_branches(
        examples, "teacher", mixture=False, settings=SETTINGS.model_copy(update={"max_steps": 2})
    )
    # expert-b with a one-stage curriculum: the same plan shape as a recipe with `curriculum:`
    hard = [CurriculumStage(name="all", max_steps=2)]
    plans[1] = BranchPlan(plans[1].name, plans[1].where, plans[1].settings, hard)
    results = train_branches(examples, tiny_model_dir, tmp_path / "experts", plans, show_progress=False)
    a, b = tmp_path / "experts" / "expert-a", tmp_path / "experts" / "expert-b"
    assert results["expert-a"].examples == 4 and results["expert-b"].examples == 2
    assert isinstance(results["expert-b"], CurriculumResult) and results["expert-b"].steps == 2
    for d in (a, b):
        assert (d / "model.safetensors").exists() and (d / "chat_template.jinja").exists()
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    base = load_file(tiny_model_dir / "model.safetensors")
    assert all(not torch.equal(w[k], base[k]) for w in (wa, wb) for k in ["model.norm.weight"])

    config = tmp_path / "merge.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "merge_method": "linear",
                "models": [
                    {"model": str(a), "parameters": {"weight": 0.5}},
                    {"model": str(b), "parameters": {"weight": 0.5}},
                ],
                "dtype": "float32",
            }
        )
    )
    run_merge(config, tmp_path / "merged", show_progress=False)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    w = merged.state_dict()["model.layers.0.mlp.up_proj.weight"]
    key = "model.layers.0.mlp.up_proj.weight"
    assert torch.allclose(w, (wa[key] + wb[key]) / 2, atol=1e-6)
    assert merged(torch.tensor([[1, 2, 3]])).logits.shape[-1] == base["model.embed_tokens.weight"].shape[0]
