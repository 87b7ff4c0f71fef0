"""Check a merge search against the disk before any trial, and load its dev data.

The template is planned (config shape, method, arity, parameter names and ranges, folders, tensor shapes;
no weight is read) at both ends of every range and at every choice, so a range that leaves the method's
bounds fails now rather than at trial 17. A sequential merge is checked step by step with the first model
standing in for the result of the steps before it (it has the same tensors).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from branchmerge.errors import BranchmergeError
from branchmerge.merge.config import validate_merge_config
from branchmerge.merge.plan import build_plan
from branchmerge.merge.search_score import DevData, encode_examples
from branchmerge.merge.search_spec import LossObjective, SearchSpec, Slot, Template
from branchmerge.records import Problem, SFTExample, read_jsonl


def standalone_steps(config: dict[str, Any] | list[dict[str, Any]], stand_in: str) -> list[dict[str, Any]]:
    """Each step as a plain merge config, earlier steps' outputs replaced by `stand_in`."""
    if isinstance(config, dict):
        return [config]
    names = {step["name"] for step in config}
    out = []
    for step in config:
        plain = {k: v for k, v in step.items() if k != "name"}
        if plain.get("base_model") in names:
            plain["base_model"] = stand_in
        plain["models"] = [{**m, "model": stand_in} if m["model"] in names else m for m in plain["models"]]
        out.append(plain)
    return out


def check_template(template: Template, source: str) -> None:
    """Plan the template at every probe of every space; all distinct problems are reported together."""
    n_probes = max((len(s.space.probes()) for s in template.slots), default=1)
    problems: dict[str, None] = {}
    stand_in = template.input_models()[0] if template.input_models() else ""
    for j in range(n_probes):

        def probe(slot: Slot, j: int = j) -> Any:
            values = slot.space.probes()
            return values[min(j, len(values) - 1)]

        steps = standalone_steps(template.fill(probe), stand_in)
        for k, step in enumerate(steps, start=1):
            where = f"{source}: template" + (f" (step {k})" if len(steps) > 1 else "")
            try:
                build_plan(validate_merge_config(step, where), where)
            except BranchmergeError as e:
                problems |= dict.fromkeys(str(e).splitlines())
    if problems:
        raise BranchmergeError("\n".join(problems))


def load_dev_data(spec: SearchSpec) -> DevData:
    """The first `max_examples` records of each domain's file; errors name the spec field or the file line."""
    o = spec.objective
    field, files, record = (
        ("dev", o.dev, SFTExample) if isinstance(o, LossObjective) else ("problems", o.problems, Problem)
    )
    missing = [
        f"{spec.source}: objective.{field}.{domain}: {file}: file not found"
        for domain, file in files.items()
        if not Path(file).is_file()
    ]
    if missing:
        raise BranchmergeError("\n".join(missing))
    data: dict[str, list[Any]] = {}
    for domain, file in files.items():
        data[domain] = read_jsonl(file, record)[: o.max_examples]  # type: ignore[type-var]
        if not data[domain]:
            raise BranchmergeError(f"{spec.source}: objective.{field}.{domain}: {file} has no records")
    return data


def check_tokenizer(spec: SearchSpec, template: Template, data: DevData) -> None:
    """For the loss: the merged model's tokenizer must mark assistant tokens (checked on the input it copies)."""
    if not isinstance(spec.objective, LossObjective):
        return
    source = template.body.get("tokenizer_source")
    if source in (None, "base"):
        source = template.body.get("base_model") or template.input_models()[0]
    tokenizer = AutoTokenizer.from_pretrained(source)
    for domain, examples in data.items():
        encode_examples(tokenizer, examples[:1], f"{spec.source}: objective.dev.{domain} ({source})")  # type: ignore[arg-type]


def check_search(spec: SearchSpec, template: Template) -> DevData:
    """Everything a search needs, checked before any merge; returns the dev data by domain."""
    problems = []
    try:
        check_template(template, spec.source)
    except BranchmergeError as e:
        problems.append(str(e))
    try:
        data = load_dev_data(spec)
    except BranchmergeError as e:
        problems.append(str(e))
    if problems:
        raise BranchmergeError("\n".join(problems))
    check_tokenizer(spec, template, data)
    return data
