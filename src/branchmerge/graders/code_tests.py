"""Assert-style code tests, read by the grader (never run): which values to ask the solution for, and the checks
to make on the plain values it sends back. See code.py for the protocol and the supported test shapes.

`plan_tests(tests, entry_point)` parses every test with `ast` and returns a `Plan`: the probes the solution's
process must evaluate, in order (a call of one of its functions with plain-data arguments, or an expression over
its names), and the checks, each an `assert` expression that `run_check` evaluates here, in the grader, with each
probe replaced by the value the solution returned. Everything the grader evaluates is plain data (numbers,
strings, lists, tuples, dicts, sets, bytes, None) and a fixed list of pure functions, so no object of the
solution's can take part in a comparison. A shape the grader cannot split this way raises `TestShapeError`
naming the test and line: it is never run some other way, and never passes.
"""

from __future__ import annotations

import ast
import itertools
import random
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from branchmerge.graders.code_eval import (
    SAFE_BUILTINS,
    SAFE_MODULES,
    Deferred,
    ProbeFailed,
    TestShapeError,
    evaluate,
    is_json_import,
    plain,
)

MAX_UNROLL = 10_000  # iterations of one `for` loop in a test

# Nodes the grader evaluates itself; a node of any other kind that uses the solution is sent whole as a probe.
_HERE = (ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.IfExp, ast.Subscript, ast.Tuple, ast.List,
         ast.Set, ast.Dict, ast.Call, ast.Slice, ast.Starred, ast.keyword)  # fmt: skip


@dataclass(frozen=True)
class Probe:
    """One value the solution's process computes: `callee(*args, **kwargs)` or `expr` with `bound` names."""

    callee: str | None = (
        None  # "f" (a function of the solution) or "Solution().f" (a method of a fresh instance)
    )
    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()
    expr: str | None = None
    bound: tuple[tuple[str, Any], ...] = ()  # the test's own names the expression uses (plain values)
    aliases: tuple[tuple[str, str], ...] = ()  # e.g. ("candidate", "add") in HumanEval's check()
    where: str = ""  # the test text it comes from, for details


@dataclass(frozen=True)
class Check:
    test: int  # index in the spec's tests
    line: int
    source: str  # the assert statement, for details
    node: ast.expr
    env: dict[str, Any]
    probes: dict[int, int]  # id(node) -> index in Plan.probes, for the probe nodes of this check


@dataclass
class Plan:
    probes: list[Probe] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    modules: dict[str, Any] = field(default_factory=dict)  # `import math as m` and the like


_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp, ast.comprehension)


def _comprehension_names(node: ast.AST) -> set[str]:
    """Names bound by the comprehensions inside `node` (the test's own loop variables there)."""
    return {
        t.id
        for c in ast.walk(node)
        if isinstance(c, ast.comprehension)
        for t in ast.walk(c.target)
        if isinstance(t, ast.Name)
    }


def _is_print(node: ast.expr) -> bool:
    if isinstance(node, ast.Call):
        node = node.func
    return isinstance(node, ast.Name) and node.id == "print"


def _fail(test: int, node: ast.AST, source: str, why: str) -> TestShapeError:
    line = getattr(node, "lineno", 0)
    text = (ast.get_source_segment(source, node) or "").strip().splitlines()
    snippet = f": {text[0][:100]!r}" if text else ""
    return TestShapeError(f"tests[{test}] line {line}: {why}{snippet}")


class _Planner:
    def __init__(self, entry_point: str | None) -> None:
        self.entry = entry_point
        self.plan = Plan()
        # random: seeded, so a test that draws its inputs asks the same questions every time it is read
        self.modules: dict[str, Any] = {"random": random.Random(0)}
        self.unknown_modules: set[str] = set()
        self.test, self.source = 0, ""
        self.env: dict[str, Any] = {}

    # --- names ---
    def kind(self, name: str, env: dict[str, Any], aliases: dict[str, str]) -> str:
        if name in aliases:
            return "alias"
        if name == "__import__":
            return "import"  # only __import__('json') and the like: see is_json_import
        if name in env:
            return "env"
        if name == self.entry:
            return "solution"
        if name in self.modules or (name in SAFE_MODULES and name not in self.unknown_modules):
            return "module"  # the known modules need no import (MBPP keeps its imports in another column)
        if name in self.unknown_modules:
            return "unknown-module"
        return "builtin" if name in SAFE_BUILTINS else "solution"

    def uses_solution(self, node: ast.AST, env: dict[str, Any], aliases: dict[str, str]) -> bool:
        local = _comprehension_names(node)
        for n in ast.walk(node):
            if (
                isinstance(n, ast.Name)
                and n.id not in local
                and (
                    self.kind(n.id, env, aliases) in ("alias", "solution")
                    or isinstance(env.get(n.id), Deferred)
                )
            ):
                return True
        return False

    def err(self, node: ast.AST, why: str) -> TestShapeError:
        return _fail(self.test, node, self.source, why)

    # --- statements ---
    def module(self, test: int, source: str) -> None:
        self.test, self.source = test, source
        try:
            tree = ast.parse(source)
        except SyntaxError as e:
            raise TestShapeError(f"tests[{test}] line {e.lineno}: not valid Python: {e.msg}") from None
        checks = {s.name: s for s in tree.body if isinstance(s, ast.FunctionDef) and s.name == "check"}
        called = False
        env = self.env  # one namespace for all the tests, in order, as when they run one after another
        for stmt in tree.body:
            if isinstance(stmt, ast.FunctionDef) and stmt.name == "check":
                continue
            if (
                checks
                and isinstance(stmt, ast.Expr)
                and isinstance(stmt.value, ast.Call)
                and isinstance(stmt.value.func, ast.Name)
                and stmt.value.func.id == "check"
            ):
                call = stmt.value
                if len(call.args) != 1 or not isinstance(call.args[0], ast.Name) or call.keywords:
                    raise self.err(stmt, "check(...) must be called with the solution's function name")
                self.check_body(checks["check"], call.args[0].id, env)
                called = True
                continue
            self.statement(stmt, env, {})
        if checks and not called:
            if not self.entry:
                raise self.err(
                    checks["check"], "the tests define check(candidate) but the spec has no entry_point"
                )
            self.check_body(checks["check"], self.entry, env)

    def check_body(self, fn: ast.FunctionDef, target: str, env: dict[str, Any]) -> None:
        params = [a.arg for a in fn.args.args]
        if len(params) != 1 or fn.args.vararg or fn.args.kwarg or fn.args.kwonlyargs or fn.decorator_list:
            raise self.err(fn, "check must take exactly one argument (the candidate function)")
        local = dict(env)
        for stmt in fn.body:
            self.statement(stmt, local, {params[0]: target})

    def statement(self, stmt: ast.stmt, env: dict[str, Any], aliases: dict[str, str]) -> None:
        if isinstance(stmt, ast.Assert):
            self.assertion(stmt, env, aliases)
        elif isinstance(stmt, ast.Pass):
            pass
        elif isinstance(stmt, ast.Import | ast.ImportFrom):
            self.imports(stmt, env)
        elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            self.assign(stmt.targets[0], stmt.value, env, aliases)
        elif isinstance(stmt, ast.For) and not stmt.orelse:
            self.loop(stmt, env, aliases)
        elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            pass  # a docstring or a bare constant
        elif (
            isinstance(stmt, ast.Expr)
            and _is_print(stmt.value)
            and self.kind("print", env, aliases) == "solution"
        ):
            pass  # the test's own output (or a bare `print`) checks nothing
        elif isinstance(stmt, ast.Expr) and self.uses_solution(stmt.value, env, aliases):
            raise self.err(
                stmt,
                "a call whose result no assert checks (tests of in-place changes to arguments or of state "
                "are not supported; assert on the returned value)",
            )
        else:
            raise self.err(stmt, f"unsupported statement ({type(stmt).__name__}) in a test")

    def imports(self, stmt: ast.Import | ast.ImportFrom, env: dict[str, Any]) -> None:
        if isinstance(stmt, ast.Import):
            for alias in stmt.names:
                top = alias.name.split(".")[0]
                name = alias.asname or top
                if alias.name in SAFE_MODULES or alias.name == "random":
                    self.modules[name] = (
                        self.modules["random"] if alias.name == "random" else SAFE_MODULES[alias.name]
                    )
                else:
                    self.unknown_modules.add(name)
            return
        module = self.modules["random"] if stmt.module == "random" else SAFE_MODULES.get(stmt.module or "")
        for alias in stmt.names:
            name = alias.asname or alias.name
            if module is not None and hasattr(module, alias.name) and not alias.name.startswith("_"):
                env[name] = getattr(module, alias.name)
            else:
                self.unknown_modules.add(name)

    def assign(self, target: ast.expr, value: ast.expr, env: dict[str, Any], aliases: dict[str, str]) -> None:
        if isinstance(target, ast.Name) and self.uses_solution(value, env, aliases):
            probes: dict[int, int] = {}
            self.probe(value, env, aliases, probes)
            env[target.id] = Deferred(value, dict(env), probes)
            return
        self.supported(value, env, aliases)
        self.bind(target, self.value(value, env), env)

    def bind(self, target: ast.expr, value: Any, env: dict[str, Any]) -> None:
        if isinstance(target, ast.Name):
            env[target.id] = value
        elif isinstance(target, ast.Tuple | ast.List) and all(isinstance(t, ast.Name) for t in target.elts):
            try:
                values = list(value)
            except TypeError:
                raise self.err(target, "cannot unpack a non-sequence") from None
            if len(values) != len(target.elts):
                raise self.err(target, f"cannot unpack {len(values)} values into {len(target.elts)} names")
            for t, v in zip(target.elts, values, strict=True):
                env[t.id] = v  # type: ignore[attr-defined]
        else:
            raise self.err(target, "only names (or a tuple of names) can be assigned in a test")

    def loop(self, stmt: ast.For, env: dict[str, Any], aliases: dict[str, str]) -> None:
        if self.uses_solution(stmt.iter, env, aliases):
            raise self.err(stmt, "a loop over values the solution returns is not supported")
        self.supported(stmt.iter, env, aliases)
        values = list(itertools.islice(iter(self.value(stmt.iter, env)), MAX_UNROLL + 1))
        if len(values) > MAX_UNROLL:
            raise self.err(stmt, f"a loop of more than {MAX_UNROLL} iterations")
        for v in values:
            self.bind(stmt.target, v, env)
            for inner in stmt.body:
                self.statement(inner, env, aliases)

    def assertion(self, stmt: ast.Assert, env: dict[str, Any], aliases: dict[str, str]) -> None:
        probes: dict[int, int] = {}
        if self.uses_solution(stmt.test, env, aliases):
            self.probe(stmt.test, env, aliases, probes)
        else:
            self.supported(stmt.test, env, aliases)
        source = (ast.get_source_segment(self.source, stmt) or "").strip()
        self.plan.checks.append(Check(self.test, stmt.lineno, source, stmt.test, dict(env), probes))

    # --- expressions ---
    def value(self, node: ast.expr, env: dict[str, Any]) -> Any:
        """A test-side value computed now (the planner's own constants, loop ranges, call arguments)."""
        try:
            return evaluate(node, env, self.modules, {}, [])
        except ProbeFailed:
            raise self.err(
                node, "a value computed from the solution's results cannot be an argument"
            ) from None
        except TestShapeError:
            raise
        except Exception as e:
            raise self.err(node, f"the test's own expression failed: {type(e).__name__}: {e}") from None

    def supported(self, node: ast.AST, env: dict[str, Any], aliases: dict[str, str]) -> None:
        """Raise unless the grader can evaluate `node` itself (node kinds, names and functions it knows)."""
        local = _comprehension_names(node)
        for n in ast.walk(node):
            if isinstance(n, ast.Name) and n.id in local:
                continue
            if isinstance(n, ast.Name):
                kind = self.kind(n.id, env, aliases)
                if kind == "unknown-module":
                    raise self.err(
                        n, f"module {n.id!r} is not available to tests (known: {', '.join(SAFE_MODULES)})"
                    )
            elif isinstance(n, ast.Attribute):
                if n.attr.startswith("_"):
                    raise self.err(n, "attributes starting with '_' are not available to tests")
            elif isinstance(n, ast.Call) and not is_json_import(n):
                if not isinstance(n.func, ast.Name | ast.Attribute):
                    raise self.err(n, "only named functions and methods can be called here")
                if (
                    isinstance(n.func, ast.Name)
                    and n.func.id not in local
                    and self.kind(n.func.id, env, aliases)
                    not in (
                        "builtin",
                        "env",
                    )
                ):
                    raise self.err(n, f"{n.func.id!r} is not a function tests may call")
            elif not isinstance(
                n, _HERE + _COMPREHENSIONS + (ast.Name, ast.Constant, ast.Attribute, ast.expr_context)
            ):
                if isinstance(n, ast.operator | ast.unaryop | ast.cmpop | ast.boolop):
                    continue
                raise self.err(n, f"unsupported expression ({type(n).__name__}) in a test")

    def probe(
        self, node: ast.expr, env: dict[str, Any], aliases: dict[str, str], probes: dict[int, int]
    ) -> None:
        """Split `node` (which uses the solution) into probes, recorded in `probes` by node id."""
        if not self.uses_solution(node, env, aliases):
            self.supported(node, env, aliases)
            return
        if isinstance(node, ast.Name) and isinstance(env.get(node.id), Deferred):
            return  # evaluated with the check from its own probes
        callee = self.callee(node, env, aliases)
        if callee is not None:
            assert isinstance(node, ast.Call)
            args = self.call_args(node, env)
            kwargs = tuple((k.arg, self.value(k.value, env)) for k in node.keywords if k.arg)
            if not plain([args, [v for _, v in kwargs]]):
                raise self.err(
                    node, "an argument is not plain data (numbers, text, lists, tuples, dicts, sets)"
                )
            self.add(node, probes, Probe(callee=callee, args=args, kwargs=kwargs, where=self.where(node)))
            return
        if self.grader_side(node, env, aliases):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.expr):
                    self.probe(child, env, aliases, probes)
                elif isinstance(child, ast.keyword):
                    self.probe(child.value, env, aliases, probes)
            return
        self.opaque(node, env, aliases, probes)

    def grader_side(self, node: ast.expr, env: dict[str, Any], aliases: dict[str, str]) -> bool:
        """Whether the grader applies `node`'s own operation (an operator, a display, a known pure function) to
        operands that may be probes. A method call or attribute of the solution's result is not: the solution
        evaluates it (`candidate(x).lower()`, `Solution(2).f()`), and its result must be plain data."""
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name):
                return self.kind(f.id, env, aliases) in ("builtin", "env")
            return (
                isinstance(f, ast.Attribute)
                and isinstance(f.value, ast.Name)
                and (self.kind(f.value.id, env, aliases) == "module")
            )
        return isinstance(node, _HERE)

    def judged_by_solution(self, node: ast.Call, env: dict[str, Any], aliases: dict[str, str]) -> bool:
        """`helper(f(x), 12.5)`: a function the tests do not define, other than the one under test, given a
        result of the solution's; it could answer whatever the check wants."""
        f = node.func
        if isinstance(f, ast.Name) and (f.id in aliases or f.id == self.entry):
            return False
        inner = [a for a in [*node.args, *(k.value for k in node.keywords)] for n in ast.walk(a)
                 if isinstance(n, ast.Call) and self.uses_solution(n.func, env, aliases)]  # fmt: skip
        return bool(inner)

    def callee(self, node: ast.expr, env: dict[str, Any], aliases: dict[str, str]) -> str | None:
        """ "f" / "Solution().f" when `node` calls the solution with arguments the grader can compute, else None."""
        if not isinstance(node, ast.Call) or any(k.arg is None for k in node.keywords):
            return None
        if any(self.uses_solution(a, env, aliases) for a in [*node.args, *(k.value for k in node.keywords)]):
            return None
        f = node.func
        if isinstance(f, ast.Name) and self.kind(f.id, env, aliases) in ("alias", "solution"):
            return aliases.get(f.id, f.id)
        if (
            isinstance(f, ast.Attribute)
            and isinstance(f.value, ast.Call)
            and isinstance(f.value.func, ast.Name)
            and not f.value.args
            and not f.value.keywords
            and self.kind(f.value.func.id, env, aliases) == "solution"
            and not f.attr.startswith("_")
        ):
            return f"{f.value.func.id}().{f.attr}"
        return None

    def call_args(self, node: ast.Call, env: dict[str, Any]) -> tuple[Any, ...]:
        args: list[Any] = []
        for a in node.args:
            self.supported(a, env, {})
            if isinstance(a, ast.Starred):
                args.extend(self.value(a.value, env))
            else:
                args.append(self.value(a, env))
        return tuple(args)

    def opaque(
        self, node: ast.expr, env: dict[str, Any], aliases: dict[str, str], probes: dict[int, int]
    ) -> None:
        """`node` evaluated whole by the solution's process. It must not hold a comparison against a value of
        the test's (that value would be in the solution's hands), so ==, <, in ... are refused inside it."""
        for n in ast.walk(node):
            if isinstance(n, ast.Name) and self.kind(n.id, env, aliases) == "unknown-module":
                raise self.err(n, f"module {n.id!r} is not available to tests")
        for n in ast.walk(node):
            if isinstance(n, ast.Compare) and (
                not all(isinstance(op, ast.Is | ast.IsNot) for op in n.ops)
                or any(isinstance(x, ast.Constant) for x in [n.left, *n.comparators])
            ):
                why = "a comparison inside an expression the solution evaluates (compare outside it)"
                raise self.err(n, why)
            if isinstance(n, ast.Call) and self.judged_by_solution(n, env, aliases):
                raise self.err(
                    n, "a solution function applied to another's result (it would judge that result)"
                )
            if isinstance(n, ast.Name) and isinstance(env.get(n.id), Deferred):
                raise self.err(
                    n, "a variable holding a result cannot be used inside a solution-side expression"
                )
        names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
        bound = tuple(sorted((k, env[k]) for k in names if k in env and k not in aliases))
        for k, v in bound:
            if not plain(v):
                raise self.err(node, f"the test's name {k!r} is not plain data")
        used = tuple(sorted((a, t) for a, t in aliases.items() if a in names))
        self.add(
            node, probes, Probe(expr=ast.unparse(node), bound=bound, aliases=used, where=self.where(node))
        )

    def add(self, node: ast.expr, probes: dict[int, int], probe: Probe) -> None:
        probes[id(node)] = len(self.plan.probes)
        self.plan.probes.append(probe)

    def where(self, node: ast.expr) -> str:
        return ast.unparse(node)[:120]


@lru_cache(maxsize=256)
def plan_tests(tests: tuple[str, ...], entry_point: str | None) -> Plan:
    """The probes and checks of `tests` (cached: the same problem is graded for many answers)."""
    planner = _Planner(entry_point)
    for i, text in enumerate(tests):
        planner.module(i, text)
    planner.plan.modules = planner.modules
    if not planner.plan.probes:
        raise TestShapeError("tests: no test calls a function of the solution")
    return planner.plan


def run_check(check: Check, modules: dict[str, Any], got: list[Any]) -> bool:
    """The check's verdict on the plain values `got` (one per probe); ProbeFailed when a probe it needs failed.
    Any other exception in the test's own expression (a TypeError comparing, say) fails the check."""
    return bool(evaluate(check.node, check.env, modules, check.probes, got))
