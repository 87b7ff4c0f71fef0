"""What a recipe names, resolved and checked before anything runs: checkpoints, model names, merge references,
judges and data files. `run` raises every problem at once; `run --dry-run` reports them in its plan."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from branchmerge.errors import BranchmergeError
from branchmerge.recipe.schema import Recipe, TeacherSpec
from branchmerge.records import SFTExample
from branchmerge.teachers.local import check_model_dir
from branchmerge.train.branches import MIXTURE, BranchPlan, expert_name, plan_branches

STUDENT = "student"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(ref: str, base_dir: Path) -> bool:
    """`Org/Name` that is not a local folder: a Hugging Face Hub model id."""
    return bool(_HUB_ID.match(ref)) and not (base_dir / ref).exists() and not Path(ref).exists()


def resolve_checkpoint(ref: str, base_dir: Path, field_name: str, *, download: bool = True) -> Path:
    """`tinylab:teacher` / `tinylab:student` name the shipped weights; `Org/Name` is a Hub id (downloaded into the
    Hub cache when `download`, else only found there); anything else is a folder path."""
    if ref.startswith("tinylab:"):
        from branchmerge.tinylab import weights

        which = ref.split(":", 1)[1]
        if which == "teacher":
            return weights.teacher_dir()
        if which == "student":
            return weights.student_dir()
        raise BranchmergeError(
            f"{field_name}: '{ref}' is not a shipped model (known: tinylab:teacher, tinylab:student)"
        )
    if is_hub_id(ref, base_dir):
        return _from_hub(ref, field_name, download)
    path = Path(ref).expanduser()
    path = path if path.is_absolute() else base_dir / path
    try:
        return check_model_dir(path)
    except BranchmergeError as e:
        raise BranchmergeError(f"{field_name}: {e}") from None


def _from_hub(ref: str, field_name: str, download: bool) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model"]
    try:
        return Path(snapshot_download(ref, allow_patterns=patterns, local_files_only=not download))
    except Exception as e:  # offline, unknown repo, gated: one line naming the field
        how = "could not be downloaded" if download else "is not in the local Hub cache"
        raise BranchmergeError(
            f"{field_name}: '{ref}' is not a local folder, and as a Hub model id it {how} ({type(e).__name__})"
        ) from None


def expert_groups(recipe: Recipe) -> list[str]:
    """What the recipe splits the student into: its domains, or its teachers' names."""
    if recipe.train.experts == "teacher":
        return [t.name for t in recipe.teachers if t.generates]
    if recipe.train.experts == "none":
        return []
    return recipe.problems.train_domains


def expert_and_mixture_names(recipe: Recipe) -> list[str]:
    """The SFT branches: one expert per group, then the mixture."""
    return [expert_name(g) for g in expert_groups(recipe)] + [MIXTURE] * recipe.train.mixture


def model_names(recipe: Recipe) -> list[str]:
    """The student, its trained branches and the GRPO model: every model that is not a merge."""
    names = [STUDENT, *expert_and_mixture_names(recipe)]
    if recipe.grpo is not None:
        names.append(recipe.grpo.name)
    return names


def evaluated_models(recipe: Recipe) -> list[str]:
    """The models the eval stages run on, in the order they are made (`eval.models`, default every model)."""
    return recipe.eval.models or [*model_names(recipe), *recipe.merges]


def judge_of(
    recipe: Recipe, name: str | None, paths: dict[str, Path]
) -> tuple[TeacherSpec, Path | None] | None:
    """The teacher a `judge:` field names, with its local checkpoint when it has one."""
    if name is None:
        return None
    t = next(t for t in recipe.teachers if t.name == name)
    return t, paths.get(f"teacher:{t.name}")


def branch_plans(recipe: Recipe, examples: list[SFTExample]) -> list[BranchPlan]:
    """The experts and the mixture of `model_names`, from the built SFT set (errors before any training)."""
    t = recipe.train
    return plan_branches(
        examples,
        t.experts,
        t.mixture,
        t.mixture_budget,
        t.settings,
        groups=expert_groups(recipe),
        curriculum=t.curriculum,
    )


def merge_refs(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, name) of every model a merge config names."""
    refs = []
    if "base_model" in config:
        refs.append(("base_model", str(config["base_model"])))
    for i, m in enumerate(config.get("models", []) or []):
        name = m.get("model") if isinstance(m, dict) else m
        refs.append((f"models[{i}].model", str(name)))
    if isinstance(config.get("tokenizer_source"), str) and config["tokenizer_source"] not in (
        "base",
        "union",
    ):
        refs.append(("tokenizer_source", config["tokenizer_source"]))
    return refs


def takes_sft_calibration(config: dict[str, Any]) -> bool:
    """Whether a merge's models take their calibration examples from the run's SFT set: a model entry whose
    `calibration` is a mapping without a `path` (`{domain: add}`: that domain's examples of build-sft's
    sft.jsonl, the ones its expert was trained on)."""
    return bool(_sft_calibrated(config))


def _sft_calibrated(config: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    entries = enumerate(config.get("models", []) or [])
    return [
        (i, m["calibration"])
        for i, m in entries
        if isinstance(m, dict)
        and isinstance(m.get("calibration"), dict)
        and m["calibration"].get("path") is None
    ]


@dataclass
class Checked:
    paths: dict[str, Path] = field(default_factory=dict)  # "student", "teacher:<name>"
    errors: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # data files not (yet) there
    hub: dict[str, str] = field(default_factory=dict)  # field → Hub id not in the local cache (dry run)


def check_recipe(recipe: Recipe, base_dir: Path, *, download: bool = True) -> Checked:
    """Every check that needs no heavy work; problems are collected, not raised."""
    out = Checked()

    def resolve(key: str, ref: str, where: str) -> None:
        try:
            out.paths[key] = resolve_checkpoint(ref, base_dir, where, download=download)
        except BranchmergeError as e:
            if not download and is_hub_id(ref, base_dir):
                out.hub[where] = ref
            else:
                out.errors.append(str(e))

    for i, t in enumerate(recipe.teachers):
        if t.checkpoint is not None:
            resolve(f"teacher:{t.name}", t.checkpoint, f"teachers[{i}].checkpoint")
    resolve(STUDENT, recipe.train.student, "train.student")
    out.errors += _name_errors(recipe) + _engine_errors(recipe)
    out.missing += _missing_files(recipe, base_dir)
    return out


def _engine_errors(recipe: Recipe) -> list[str]:
    """`engine: vllm` (the recipe's, or GRPO's) on a machine without vLLM or a CUDA GPU."""
    from branchmerge.teachers.engines import check_vllm

    errors = []
    for where, engine in (
        ("engine", recipe.engine),
        ("grpo.settings.engine", recipe.grpo and recipe.grpo.settings.engine),
    ):
        if engine == "vllm":
            try:
                check_vllm(where)
            except BranchmergeError as e:
                errors.append(str(e))
    return errors


def _name_errors(recipe: Recipe) -> list[str]:
    from branchmerge.merge import METHODS

    errors = []
    known = set(model_names(recipe))
    if recipe.grpo is not None and recipe.grpo.start not in known - {recipe.grpo.name}:
        errors.append(
            f"grpo.start: '{recipe.grpo.start}' is not a trained model of this recipe "
            f"({', '.join(sorted(known - {recipe.grpo.name}))})"
        )
    for name, cfg in recipe.merges.items():
        where = f"merges.{name}"
        if name in known:
            errors.append(f"{where}: the name '{name}' is already a model name; pick another")
        method = cfg.get("merge_method")
        if method not in METHODS:
            errors.append(
                f"{where}.merge_method: '{method}' is not a merge method (known: {', '.join(METHODS)})"
            )
        domains = recipe.problems.train_domains
        for i, source in _sft_calibrated(cfg):
            d = source.get("domain")
            if d is not None and domains and d not in domains:
                errors.append(
                    f"{where}.models[{i}].calibration.domain: '{d}' is not a training domain of this recipe "
                    f"({', '.join(domains)}); without a path the examples come from the run's SFT set"
                )
        for field_name, ref in merge_refs(cfg):
            if ref not in known:
                errors.append(
                    f"{where}.{field_name}: '{ref}' is not a model of this recipe or an earlier merge "
                    f"(known: {', '.join(sorted(known))})"
                )
        known.add(name)
    if recipe.eval.baseline not in known:
        errors.append(f"eval.baseline: '{recipe.eval.baseline}' is not a model of this recipe")
    for m in recipe.eval.models or []:
        if m not in known:
            errors.append(f"eval.models: '{m}' is not a model of this recipe ({', '.join(sorted(known))})")
    if recipe.eval.models is not None and recipe.eval.baseline not in recipe.eval.models:
        errors.append(f"eval.models: the baseline '{recipe.eval.baseline}' must be evaluated too")
    labels = [s.label or s.name for s in recipe.eval.sets]
    if len(set(labels)) != len(labels):
        errors.append(f"eval.sets: two sets share a label ({labels}); give each a `label`")
    if any(s.name == "heldout" for s in recipe.eval.sets) and recipe.problems.source != "tinylab":
        errors.append("eval.sets: 'heldout' needs tinylab problems (other sources have no held-out split)")
    return errors


def _missing_files(recipe: Recipe, base_dir: Path) -> list[str]:
    files = [(f"problems.files[{i}].path", f.path) for i, f in enumerate(recipe.problems.files)]
    files += [(f"eval.sets[{i}].path", s.path) for i, s in enumerate(recipe.eval.sets) if s.path]
    paths = [(where, data_path(p, base_dir)) for where, p in files]
    return [f"{where}: {path} not found" for where, path in paths if not path.exists()]


def resolve_merge(
    cfg: dict[str, Any], models: dict[str, tuple[Path, str]], sft: str | None = None
) -> dict[str, Any]:
    """A merge config with each model name replaced by that model's folder (`models`: name -> (folder, key)) and,
    when given, `sft` (the SFT set, or its stage key) as the path of every calibration that names none."""
    c = copy.deepcopy(cfg)
    if sft is not None:
        for i, source in _sft_calibrated(c):
            c["models"][i]["calibration"] = {**source, "path": sft}
    if "base_model" in c:
        c["base_model"] = str(models[str(c["base_model"])][0])
    for m in c.get("models", []):
        m["model"] = str(models[str(m["model"])][0])
    ts = c.get("tokenizer_source")
    if isinstance(ts, str) and ts in models:
        c["tokenizer_source"] = str(models[ts][0])
    return c


def data_path(ref: str, base_dir: Path) -> Path:
    path = Path(ref).expanduser()
    return path if path.is_absolute() else base_dir / path


def preflight(recipe: Recipe, base_dir: Path) -> dict[str, Path]:
    """`check_recipe`, raising every problem at once; returns the resolved checkpoints."""
    checked = check_recipe(recipe, base_dir)
    if checked.errors or checked.missing:
        raise BranchmergeError("\n".join(checked.errors + checked.missing))
    return checked.paths
