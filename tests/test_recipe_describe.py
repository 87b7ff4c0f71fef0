"""A recipe run's models as the claim sees them: kinds, domains, parents and compute from the stage records."""

from pathlib import Path

from branchmerge.evaluate.claim_models import check_models, total_compute
from branchmerge.recipe.cache import StageOutcome
from branchmerge.recipe.describe import describe_models
from branchmerge.recipe.schema import load_recipe
from branchmerge.recipe.summaries import MergeSummary, TrainSummary

DEMO = Path(__file__).parents[1] / "src/branchmerge/recipe/recipes/demo.yaml"


def _train(name, seconds, **tokens):
    summary = TrainSummary(examples=8, steps=2, first_loss=1.0, final_loss=0.5, **tokens)
    return StageOutcome(name, "k", Path("/x"), True, 0.0, seconds, summary)


def _merge(name, seconds):
    return StageOutcome(name, "k", Path("/x"), True, 0.0, seconds, MergeSummary(method="slerp", tensors=3))


def test_demo_models_are_described_from_their_stages():
    recipe = load_recipe(DEMO)
    outcomes = [
        _train("train.expert-add", 10.0, train_tokens=1000, loss_tokens=400),
        _train("train.expert-sort", 11.0, train_tokens=1100, loss_tokens=450),
        _train("train.expert-compare", 12.0, train_tokens=1200),  # a record from before tokens were counted
        _train("train.mixture", 30.0, train_tokens=3300, loss_tokens=1300),
        *(_merge(f"merge.{m}", 1.0) for m in recipe.merges),
    ]
    models = {m.name: m for m in describe_models(recipe, outcomes)}
    assert models["student"].kind == "base"
    add = models["expert-add"]
    assert (add.kind, add.domain, add.parents, add.train_tokens, add.loss_tokens, add.wall_s) == (
        "expert",
        "add",
        ["student"],
        1000,
        400,
        10.0,
    )
    assert models["expert-compare"].train_tokens is None  # unknown rather than the data set's size
    assert (models["mixture"].kind, models["mixture"].domain) == ("mixture", None)
    assert models["slerp-add-sort"].parents == ["expert-add", "expert-sort"]
    assert models["ties"].parents == ["expert-add", "expert-sort", "expert-compare", "student"]
    assert models["fusion-all"].parents == ["fusion-add-sort", "expert-compare"]
    checked = check_models(list(models.values()))
    total = total_compute("fusion-all", checked)
    assert total.wall_s == 10 + 11 + 12 + 1 + 1 and total.train_tokens is None  # expert-compare's is unknown
    assert total_compute("slerp-add-sort", checked).train_tokens == 2100
