"""Sequential merges, ((A & B) & C): several named steps in one YAML file, as mergekit-multi reads them.

Each document of the file is a merge config. Every step but the last has a `name`; a later step uses an earlier
step's output by writing that name where a model folder would go (`models[].model`, `base_model`,
`tokenizer_source`). Steps run in file order, so a name must be defined before it is used. The last step is
the result.

The whole sequence is checked before the first step runs: each later step is planned against a stand-in for
the earlier outputs (same tensor names and shapes as the step that makes them, in its output dtype), so a typo
in step 3 is reported before step 1 spends an hour.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from branchmerge.errors import BranchmergeError
from branchmerge.merge.checkpoint import SINGLE_FILE, Checkpoint, TensorInfo, safetensors_dtype_name
from branchmerge.merge.config import MergeConfig
from branchmerge.merge.plan import MergePlan, build_plan


@dataclass(frozen=True)
class SequencePlan:
    steps: list[MergeConfig]  # names replaced by the folders of earlier outputs
    outputs: list[Path]  # where each step writes; the last is the final output
    order: str  # e.g. "((expert-math & expert-code) & expert-science)"
    names: list[str]  # each step's name ("final" for an unnamed last step)
    plans: list[MergePlan]  # checked against stand-ins for earlier outputs; rebuild before running a step


def _label(ref: str, exprs: dict[str, str]) -> str:
    return exprs.get(ref, Path(ref).name or ref)


def _expression(cfg: MergeConfig, exprs: dict[str, str]) -> str:
    """The step as `(base & other & ...)`, base first: for two-model methods the left operand is the base."""
    refs = [m.model for m in cfg.models]
    if cfg.base_model is not None:
        refs = [cfg.base_model, *(r for r in refs if r != cfg.base_model)]
    return "(" + " & ".join(_label(r, exprs) for r in refs) + ")"


def _substitute(
    cfg: MergeConfig, done: dict[str, Path], later: set[str], where: str
) -> tuple[MergeConfig, list[str]]:
    """Replace references to earlier steps by their folders; a reference to a later step is a problem."""
    problems = []

    def sub(ref: str | None, field: str) -> str | None:
        if ref is None:
            return None
        if ref in done:
            return str(done[ref])
        if ref in later:
            problems.append(
                f"{where}: {field}: '{ref}' is a step defined later in the file; steps run in order"
            )
        return ref

    models = [
        m.model_copy(update={"model": sub(m.model, f"models[{i}].model")}) for i, m in enumerate(cfg.models)
    ]
    step = cfg.model_copy(
        update={
            "models": models,
            "base_model": sub(cfg.base_model, "base_model"),
            "tokenizer_source": sub(cfg.tokenizer_source, "tokenizer_source"),
        }
    )
    step._source = cfg.source
    return step, problems


def output_checkpoint(plan: MergePlan, out: Path) -> Checkpoint:
    """What a step will write, from its plan alone: the stand-in later steps are checked against."""
    tensors = {
        job.name: TensorInfo(job.shape, safetensors_dtype_name(job.out_dtype), out / SINGLE_FILE)
        for job in plan.jobs
    }
    return Checkpoint(out, dict(plan.reference.config), tensors, tokenizer_dir=plan.tokenizer_dir)


def plan_sequence(configs: Sequence[MergeConfig], out_dir: Path, intermediate_dir: Path) -> SequencePlan:
    """Check names and references, then plan every step (reading headers, no weights)."""
    problems: list[str] = []
    names = [c.name for c in configs]
    for cfg in configs[:-1]:
        if cfg.name is None:
            problems.append(
                f"{cfg.source}: name: every step but the last needs a name, so later steps can use it"
            )
    for i, name in enumerate(names):
        if name is not None and name in names[:i]:
            problems.append(f"{configs[i].source}: name: '{name}' is used by an earlier step too")
    if problems:
        raise BranchmergeError("\n".join(problems))

    steps: list[MergeConfig] = []
    outputs: list[Path] = []
    plans: list[MergePlan] = []
    exprs: dict[str, str] = {}
    virtual: dict[Path, Checkpoint] = {}
    done: dict[str, Path] = {}
    for i, cfg in enumerate(configs):
        last = i == len(configs) - 1
        later = {n for n in names[i + 1 :] if n is not None}
        step, found = _substitute(cfg, done, later, cfg.source)
        if found:
            raise BranchmergeError("\n".join(found))
        out = out_dir if last else intermediate_dir / str(cfg.name)
        plan = build_plan(step, step.source, virtual)
        virtual[out] = output_checkpoint(plan, out)
        expr = _expression(cfg, exprs)
        if cfg.name is not None:
            exprs[cfg.name] = expr
            done[cfg.name] = out
        steps.append(step)
        outputs.append(out)
        plans.append(plan)
    final = configs[-1]
    return SequencePlan(
        steps, outputs, _expression(final, exprs), [c.name or "final" for c in configs], plans
    )
