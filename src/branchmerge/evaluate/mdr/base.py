"""The contract every `mdr` domain follows, and the registry that collects them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from branchmerge.errors import BranchmergeError
from branchmerge.records import Problem

LEVELS = range(1, 11)


@dataclass(frozen=True)
class Domain:
    """One domain: its name (the `domain` of its items), its ten fixed items, and a generator of fresh ones.

    `items()` returns exactly one Problem per level 1-10 (ids `mdr-<name>-L<level>`). `generate(level, seed)`
    returns a new Problem of that level, deterministic in `seed` (ids `mdr-<name>-L<level>-s<seed>`).
    Each Problem carries `level`, `source="mdr"` and a grader spec a registered grader understands.
    """

    name: str
    items: Callable[[], list[Problem]]
    generate: Callable[[int, int], Problem]


DOMAINS: dict[str, Domain] = {}  # the built-in domains in report order, then any a user registers
_loaded = False


def register(domain: Domain) -> Domain:
    """Add a domain of your own (the built-in ones are listed in MODULES, not registered)."""
    _load_all()
    if domain.name in DOMAINS:
        raise ValueError(f"mdr domain '{domain.name}' is registered twice")
    DOMAINS[domain.name] = domain
    return domain


def _load_all() -> None:
    """Collect each built-in module's `DOMAIN` once, in MODULES order; importing a module registers nothing."""
    import importlib

    global _loaded
    if _loaded:
        return
    builtin = [importlib.import_module(f"branchmerge.evaluate.mdr.{m}").DOMAIN for m in MODULES]
    DOMAINS.update({d.name: d for d in builtin})
    _loaded = True


# Domain modules, in the order the benchmark reports them; each defines DOMAIN = Domain(NAME, items, generate).
MODULES: list[str] = ["logic", "math_reasoning", "sql", "python_debug", "science", "causal", "scenario", "ethics", "writing", "planning"]  # fmt: skip


def domain_names() -> list[str]:
    """The benchmark's domains, in report order."""
    _load_all()
    return list(DOMAINS)


def load_mdr(
    domains: list[str] | None = None, fresh_seed: int | None = None, levels: list[int] | None = None
) -> list[Problem]:
    """The fixed items of `domains` (all when None), or, with `fresh_seed`, newly generated items from it."""
    _load_all()
    names = domains or list(DOMAINS)
    unknown = [d for d in names if d not in DOMAINS]
    if unknown:
        raise BranchmergeError(f"mdr: unknown domain(s) {unknown} (known: {', '.join(DOMAINS)})")
    wanted = list(levels or LEVELS)
    out: list[Problem] = []
    for name in names:
        d = DOMAINS[name]
        if fresh_seed is None:
            out += [p for p in d.items() if p.level in wanted]
        else:
            out += [d.generate(level, fresh_seed) for level in wanted]
    return out
