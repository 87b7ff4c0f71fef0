"""The grader contract: one plug-in object per grader, (answer, reference, validated spec) -> Grade.

A grader is a `Grader`: its `name` (the spec's "type"), its `spec` model (pydantic; a raw spec dict is validated
against it before the grader runs, and a bad spec is a ValueError that names the field), its `run` function, and
whether it reads the problem's reference (`needs_reference`, a function of the validated spec) or an LLM judge
(`needs_judge`). `registry.py` lists them all explicitly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from branchmerge.errors import describe, field_path
from branchmerge.teachers.thinking import final_answer


@dataclass(frozen=True)
class Grade:
    passed: bool
    detail: str = ""
    error: str | None = None  # set (and passed False) when the grader could not grade, e.g. a bad reference


class GraderSpec(BaseModel):
    """Fields every spec has. Unknown keys are kept (and readable as attributes) so specs written for a grader
    before its model listed a key keep working; a grader whose fields are all known forbids them."""

    model_config = ConfigDict(extra="allow", frozen=True)

    type: str = "exact"


S = TypeVar("S", bound=GraderSpec)


def _always(spec: GraderSpec) -> bool:
    return True


@dataclass(frozen=True)
class Grader(Generic[S]):
    name: str
    spec: type[S]
    run: Callable[[str, str, S], Grade]
    needs_reference: Callable[[S], bool] = _always
    needs_judge: bool = False

    def parse(self, spec: Mapping[str, Any]) -> S:
        """The validated spec; ValueError naming the first bad field ("code grader spec: tests[1]: ...")."""
        try:
            return self.spec.model_validate(dict(spec))
        except ValidationError as e:
            first = e.errors()[0]
            raise ValueError(
                f"{self.name} grader spec: {field_path(first['loc'])}: {describe(first)}"
            ) from None


def plugin(spec: Mapping[str, Any]) -> Grader[Any]:
    """The grader named by `spec["type"]` (default "exact"); KeyError naming the known ones."""
    from branchmerge.graders.registry import GRADERS

    kind = spec.get("type", "exact")
    if kind not in GRADERS:
        raise KeyError(f"grader type '{kind}' is not known (known: {', '.join(sorted(GRADERS))})")
    return GRADERS[kind]


def needs_reference(spec: Mapping[str, Any]) -> bool:
    """Whether the grader compares with the problem's `reference`: code is judged by the spec's tests, SQL by
    `expected` rows when given, regex by the spec's `pattern` when given. A spec that does not validate answers
    False, so the item reaches its grader, which reports the bad field as a grader error."""
    from branchmerge.graders.registry import GRADERS

    grader = GRADERS.get(spec.get("type", "exact"))
    if grader is None:
        return True  # an unknown type is reported by whoever grades it
    try:
        return grader.needs_reference(grader.parse(spec))
    except ValueError:
        return False


def grade(answer: str, reference: str, spec: Mapping[str, Any]) -> Grade:
    """Grade `answer` with the grader named by `spec["type"]`; a bad spec raises ValueError naming the field.

    Every grader sees only the final answer, the text after the last `</think>` (`teachers.thinking.final_answer`):
    the reasoning before it counts for nothing, and an output cut off inside `<think>`, or with nothing after
    `</think>`, fails as no answer.
    """
    grader = plugin(spec)
    parsed = grader.parse(spec)
    text, no_answer = final_answer(answer)
    if no_answer is not None:
        return Grade(False, no_answer)
    return grader.run(text, reference, parsed)
