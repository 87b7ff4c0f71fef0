"""The grader's side of assert tests: evaluate a test expression on plain data, with each probe (a value only the
solution can compute) replaced by what the solution sent back (see code.py and code_tests.py).

Only constants, the test's own names, plain data (exact built-in types), the pure built-ins and modules below
and methods of plain values are ever touched, and operations that could make a huge value from a small one
(`**`, `*` of a sequence, `<<`, `range`) are bounded, so a returned value cannot make the grader run its code
or exhaust its memory.
"""

from __future__ import annotations

import ast
import builtins
import copy
import json
import math
import operator
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

LIMIT = 1_000_000  # the longest sequence or range a test expression may build


def _pow(a: Any, b: Any, mod: Any = None) -> Any:
    if mod is not None:
        return pow(a, b, mod)  # modular: fast whatever the exponent
    if isinstance(b, int) and abs(b) > 10_000 and isinstance(a, int) and abs(a) > 1:
        raise OverflowError("exponent too large for a test")
    return operator.pow(a, b)


def _mul(a: Any, b: Any) -> Any:
    for seq, n in ((a, b), (b, a)):
        if isinstance(seq, str | bytes | list | tuple) and isinstance(n, int) and len(seq) * n > LIMIT:
            raise OverflowError("sequence too long for a test")
    return operator.mul(a, b)


def _lshift(a: Any, b: Any) -> Any:
    if isinstance(b, int) and b > 100_000:
        raise OverflowError("shift too large for a test")
    return operator.lshift(a, b)


def _range(*args: int) -> range:
    r = range(*args)
    if len(r) > LIMIT:
        raise OverflowError("range too long for a test")
    return r


# Pure functions of plain data that a test may apply to a returned value (or to its own constants).
SAFE_BUILTINS = {
    name: getattr(builtins, name)
    for name in (
        "abs", "all", "any", "bool", "bytes", "chr", "complex", "dict", "divmod", "enumerate", "float",
        "frozenset", "int", "isinstance", "len", "list", "max", "min", "ord", "pow", "range", "repr", "reversed",
        "round", "set", "sorted", "str", "sum", "tuple", "type", "zip",
    )
} | {"True": True, "False": False, "None": None, "range": _range, "pow": _pow}  # fmt: skip
SAFE_MODULES: dict[str, Any] = {"math": math, "json": json, "copy": copy, "string": string}
PLAIN = (type(None), bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset)
_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: _mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: _pow, ast.BitAnd: operator.and_,
    ast.BitOr: operator.or_, ast.BitXor: operator.xor, ast.LShift: _lshift, ast.RShift: operator.rshift,
}  # fmt: skip
_UNARY: dict[type, Callable[[Any], Any]] = {
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
    ast.Not: operator.not_,
    ast.Invert: operator.invert,
}
_COMPARE: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Is: operator.is_, ast.IsNot: operator.is_not,
    ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
}  # fmt: skip


class TestShapeError(ValueError):
    __test__ = False  # not a pytest test class

    """A test the grader cannot split into probes and plain-data checks."""


class ProbeFailed(Exception):
    """A probe the check needs did not give a value (it raised, returned non-plain data, or never ran)."""


@dataclass(frozen=True)
class Deferred:
    """A test variable bound to an expression over probes (`r = candidate(x)`), evaluated with the check."""

    node: ast.expr
    env: dict[str, Any]
    probes: dict[int, int]


def is_json_import(node: ast.AST) -> bool:
    """`__import__('json')` (LiveCodeBench functional tests written by older versions of code_sets.py)."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "__import__"
        and len(node.args) == 1
        and isinstance(node.args[0], ast.Constant)
        and node.args[0].value in SAFE_MODULES
    )


def plain(v: Any) -> bool:
    if type(v) in (list, tuple, set, frozenset):
        return all(plain(x) for x in v)
    if type(v) is dict:
        return all(plain(k) and plain(x) for k, x in v.items())
    return type(v) in PLAIN


def evaluate(
    node: ast.AST, env: dict[str, Any], modules: dict[str, Any], probes: dict[int, int], got: list[Any]
) -> Any:
    """Evaluate a test expression in the grader: `got[probes[id(n)]]` stands for each probe node `n` (a
    ProbeFailed instance there is raised). Only plain data and the known pure functions are ever touched."""

    def ev(n: ast.AST) -> Any:
        if id(n) in probes:
            value = got[probes[id(n)]]
            if isinstance(value, ProbeFailed):
                raise value
            return value
        if isinstance(n, ast.Constant):
            return n.value
        if isinstance(n, ast.Name):
            if n.id in env:
                v = env[n.id]
                return evaluate(v.node, v.env, modules, v.probes, got) if isinstance(v, Deferred) else v
            if n.id in modules or n.id in SAFE_MODULES:
                return modules.get(n.id) or SAFE_MODULES[n.id]
            if n.id in SAFE_BUILTINS:
                return SAFE_BUILTINS[n.id]
            raise NameError(n.id)
        if isinstance(n, ast.Tuple):
            return tuple(_items(n.elts))
        if isinstance(n, ast.List):
            return list(_items(n.elts))
        if isinstance(n, ast.Set):
            return set(_items(n.elts))
        if isinstance(n, ast.Dict):
            out: dict[Any, Any] = {}
            for k, v in zip(n.keys, n.values, strict=True):
                if k is None:
                    out.update(ev(v))
                else:
                    out[ev(k)] = ev(v)
            return out
        if isinstance(n, ast.BinOp):
            return _BINARY[type(n.op)](ev(n.left), ev(n.right))
        if isinstance(n, ast.UnaryOp):
            return _UNARY[type(n.op)](ev(n.operand))
        if isinstance(n, ast.BoolOp):
            result = None
            for v in n.values:
                result = ev(v)
                if isinstance(n.op, ast.And) != bool(result):
                    return result
            return result
        if isinstance(n, ast.Compare):
            left = ev(n.left)
            for op, right_node in zip(n.ops, n.comparators, strict=True):
                right = ev(right_node)
                if not _COMPARE[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(n, ast.IfExp):
            return ev(n.body) if ev(n.test) else ev(n.orelse)
        if isinstance(n, ast.Subscript):
            return ev(n.value)[ev(n.slice)]
        if isinstance(n, ast.Slice):
            return slice(*(None if x is None else ev(x) for x in (n.lower, n.upper, n.step)))
        if isinstance(n, ast.Attribute):
            base = ev(n.value)
            known = any(base is m for m in (*SAFE_MODULES.values(), *modules.values()))
            if n.attr.startswith("_") or not (known or type(base) in PLAIN):
                raise TestShapeError(f"attribute {n.attr!r} is not available to tests")
            return getattr(base, n.attr)
        if isinstance(n, ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp):
            return _comprehension(n)
        if isinstance(n, ast.Call):
            if is_json_import(n):
                return SAFE_MODULES[n.args[0].value]  # type: ignore[attr-defined]
            f = ev(n.func)
            args = _items(n.args)
            kwargs = {k.arg: ev(k.value) for k in n.keywords if k.arg}
            return f(*args, **kwargs)
        raise TestShapeError(f"unsupported expression ({type(n).__name__})")

    def _comprehension(n: ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp) -> Any:
        out: list[Any] = []

        def run(i: int, scope: dict[str, Any]) -> None:
            if i == len(n.generators):
                if isinstance(n, ast.DictComp):
                    out.append(
                        (
                            evaluate(n.key, scope, modules, probes, got),
                            evaluate(n.value, scope, modules, probes, got),
                        )
                    )
                else:
                    out.append(evaluate(n.elt, scope, modules, probes, got))
                if len(out) > LIMIT:
                    raise OverflowError("comprehension too long for a test")
                return
            g = n.generators[i]
            for v in evaluate(g.iter, scope, modules, probes, got):
                inner = dict(scope)
                _bind(g.target, v, inner)
                if all(evaluate(c, inner, modules, probes, got) for c in g.ifs):
                    run(i + 1, inner)

        run(0, env)
        if isinstance(n, ast.DictComp):
            return dict(out)
        return (
            set(out) if isinstance(n, ast.SetComp) else iter(out) if isinstance(n, ast.GeneratorExp) else out
        )

    def _items(nodes: list[ast.expr]) -> list[Any]:
        out: list[Any] = []
        for x in nodes:
            if isinstance(x, ast.Starred):
                out.extend(ev(x.value))
            else:
                out.append(ev(x))
        return out

    return ev(node)


def _bind(target: ast.expr, value: Any, scope: dict[str, Any]) -> None:
    if isinstance(target, ast.Name):
        scope[target.id] = value
    elif isinstance(target, ast.Tuple | ast.List):
        values = list(value)
        if len(values) != len(target.elts):
            raise ValueError(f"cannot unpack {len(values)} values into {len(target.elts)} names")
        for t, v in zip(target.elts, values, strict=True):
            _bind(t, v, scope)
    else:
        raise TestShapeError("only names can be bound in a comprehension")
