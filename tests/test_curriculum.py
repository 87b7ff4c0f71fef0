"""Curriculum SFT: stages in order, each from the previous stage's saved weights; reruns reuse finished ones."""

import pytest
import torch
import yaml
from safetensors.torch import load_file

from branchmerge.errors import BranchmergeError
from branchmerge.train import SFTSettings, train_sft
from branchmerge.train import curriculum as cur
from branchmerge.train.curriculum import (
    DISTILQWEN_CURRICULUM,
    CurriculumStage,
    load_curriculum,
    select,
    stage_settings,
    train_curriculum,
)
from sft_fixtures import solved_examples

SETTINGS = SFTSettings(max_steps=5, batch_size=4, learning_rate=3e-3, max_length=512)


@pytest.fixture(scope="module")
def examples(tokenizer):
    """8 'add' examples marked medium and 8 'sort' examples marked hard, interleaved."""
    out = []
    for domain, difficulty in (("add", "medium"), ("sort", "hard")):
        out.append(solved_examples(tokenizer, domain, 8, difficulty=difficulty))
    return [e for pair in zip(*out) for e in pair]


@pytest.fixture
def spy(monkeypatch):
    """Records what each train_sft call got (domains of its examples, base folder) and runs the real one."""
    calls = []

    def recording(examples, base, out, settings, **kw):
        calls.append({"domains": {e.domain for e in examples}, "n": len(examples), "base": base})
        return train_sft(examples, base, out, settings, **kw)

    monkeypatch.setattr(cur, "train_sft", recording)
    return calls


def _weights(d):
    return load_file(d / "model.safetensors")


def _same(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_stages_run_in_order_each_from_the_previous_stages_weights(examples, tiny_model_dir, tmp_path, spy):
    stages = [
        CurriculumStage(name="medium", where={"difficulty": "medium"}, epochs=1),
        CurriculumStage(name="hard", where={"difficulty": ["hard"]}, max_steps=3, learning_rate=1e-3),
    ]
    out = tmp_path / "student"
    r = train_curriculum(examples, tiny_model_dir, out, stages, SETTINGS, show_progress=False)

    s1, s2 = tmp_path / "student.stages" / "01-medium", tmp_path / "student.stages" / "02-hard"
    assert [(s.name, s.examples, s.steps, s.out_dir, s.reused) for s in r.stages] == [
        ("medium", 8, 2, s1, False),  # epochs 1: ceil(8 * 1 / batch 4) = 2 steps
        ("hard", 8, 3, s2, False),
    ]
    # stage 1 saw only 'add' from the base; stage 2 only 'sort', from stage 1's saved checkpoint
    assert spy == [
        {"domains": {"add"}, "n": 8, "base": tiny_model_dir},
        {"domains": {"sort"}, "n": 8, "base": s1},
    ]
    assert r.steps == 5 and r.examples == 16
    assert r.first_loss == r.stages[0].first_loss and r.final_loss == r.stages[1].final_loss
    assert not _same(_weights(s1), _weights(tiny_model_dir))
    assert _same(_weights(out), _weights(s2))
    assert (out / "chat_template.jinja").read_text() == (tiny_model_dir / "chat_template.jinja").read_text()
    # Continuation, checked independently: stage 2 alone from stage 1's weights gives stage 2's weights bit
    # for bit.
    again = train_sft(
        select(examples, {"difficulty": ["hard"]}),
        s1,
        tmp_path / "check",
        stage_settings(stages[1], 8, SETTINGS),
        show_progress=False,
    )
    assert _same(_weights(again.out_dir), _weights(s2))
    assert r.stages[1].first_loss == again.first_loss

    # a rerun trains nothing; changing stage 2 retrains stage 2 only, from the kept stage 1
    spy.clear()
    r2 = train_curriculum(examples, tiny_model_dir, out, stages, SETTINGS, show_progress=False)
    assert spy == [] and all(s.reused for s in r2.stages)
    assert [s.final_loss for s in r2.stages] == [s.final_loss for s in r.stages]
    stages[1] = stages[1].model_copy(update={"learning_rate": 2e-3})
    r3 = train_curriculum(examples, tiny_model_dir, out, stages, SETTINGS, show_progress=False)
    assert [s.reused for s in r3.stages] == [True, False]
    assert spy == [{"domains": {"sort"}, "n": 8, "base": s1}]
    assert not _same(_weights(out), _weights(again.out_dir))


def test_empty_stages_are_reported_before_any_training(examples, tiny_model_dir, tmp_path, spy):
    stages = [
        CurriculumStage(name="easy", where={"difficulty": "easy"}),
        CurriculumStage(name="hard", where={"difficulty": "hard"}),
        CurriculumStage(name="x", where={"teacher": ["nobody", "else"], "domain": "add"}),
    ]
    with pytest.raises(BranchmergeError) as e:
        train_curriculum(examples, tiny_model_dir, tmp_path / "o", stages, SETTINGS, label="c")
    assert str(e.value).splitlines() == [
        "c: stage 1 'easy' (difficulty=easy): no SFT examples",
        "c: stage 3 'x' (teacher in [nobody, else] and domain=add): no SFT examples",
    ]
    plain = [ex.model_copy(update={"difficulty": None}) for ex in examples]
    with pytest.raises(BranchmergeError, match="no example has a difficulty: run the 'difficulty' processor"):
        train_curriculum(plain, tiny_model_dir, tmp_path / "o", DISTILQWEN_CURRICULUM, SETTINGS)
    assert spy == [] and not (tmp_path / "o").exists()


def test_stage_settings_and_the_distilqwen_default():
    assert [(s.name, s.where) for s in DISTILQWEN_CURRICULUM] == [
        ("medium", {"difficulty": ["medium"]}),
        ("hard", {"difficulty": ["hard"]}),
    ]
    base = SFTSettings(max_steps=7, batch_size=4, learning_rate=1e-3, seed=3)
    st = stage_settings(CurriculumStage(name="a", epochs=2.5, settings={"batch_size": 3}), 10, base)
    assert (st.max_steps, st.batch_size, st.learning_rate, st.seed) == (9, 3, 1e-3, 3)  # ceil(10*2.5/3)
    assert stage_settings(CurriculumStage(name="a"), 10, base).max_steps == 7
    assert stage_settings(CurriculumStage(name="a", learning_rate=2e-4), 10, base).learning_rate == 2e-4


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        ({"name": "a", "epochs": 1, "max_steps": 2}, "give 'epochs' or 'max_steps', not both"),
        ({"name": "a", "where": {"level": "3"}}, "['level'] not a field of an SFT example (known: domain"),
        ({"name": "a", "where": {"domain": []}}, "give at least one value"),
        ({"name": "a", "settings": {"max_steps": 3}}, "set these on the stage itself"),
        ({"name": "a", "settings": {"batch_sise": 3}}, "['batch_sise'] not an SFT setting"),
        ({"name": "a", "settings": {"method": "bogus"}}, "method: Input should be 'full'"),
        ({"name": "a/b"}, "not a usable stage name"),
        ({"name": "a", "epochs": 0}, "greater than 0"),
    ],
)
def test_stage_validation(stage, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        CurriculumStage.model_validate(stage)


def test_load_curriculum_names_the_file_and_field(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump([{"name": "medium", "where": {"difficulty": "medium"}, "epochs": 1}]))
    assert load_curriculum(p) == [CurriculumStage(name="medium", where={"difficulty": ["medium"]}, epochs=1)]
    p.write_text(yaml.safe_dump({"stages": [{"name": "m"}, {"name": "h", "wher": {}}]}))
    with pytest.raises(BranchmergeError, match=rf"{p}: stages\[1\].wher: unknown key"):
        load_curriculum(p)
    p.write_text(yaml.safe_dump([{"name": "m", "max_steps": -1}]))
    with pytest.raises(BranchmergeError, match=rf"{p}: \[0\].max_steps: "):
        load_curriculum(p)
    p.write_text("[]")
    with pytest.raises(BranchmergeError, match="non-empty list of stages"):
        load_curriculum(p)
