"""SQL answers: run the model's query and the reference query on the same fresh database; compare the results.

Spec: {"type": "sql", "schema": "CREATE TABLE ...; INSERT ...;"} or {"type": "sql", "db": "path/to/file.sqlite"},
plus optional "expected" (rows, a list of lists: used instead of running the reference query), "ordered" (bool,
overrides the default below) and "timeout_s" (per query, default 5). The reference is the reference query.

The query is the last ```sql fenced block of the answer, else the last untagged ``` block, else the whole
answer. Both queries run in the sandbox (sandbox.py), in a subprocess, against an in-memory copy of the database
(the schema script, or a backup of the file opened read-only). Before any untrusted SQL runs the connection is
made read-only twice over: `PRAGMA query_only` and an authorizer that allows only reading (SELECT, reading
columns, functions, recursive CTEs) and denies everything else (writes, ATTACH, PRAGMA, ...). A progress handler
interrupts a query that runs past its time limit; the sandbox timeout backs it up.

Results compare as multisets of rows (column names ignored, column order kept), or as lists when the reference
query has a top-level ORDER BY. Floats are rounded to 6 decimals and integral floats compare equal to integers
(AVG returns 2.0 where a hand-written reference has 2). An error in the model's SQL fails with sqlite's message;
an error in the reference query is a data error and raises ValueError.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import Field

from branchmerge.graders.base import Grade, Grader, GraderSpec
from branchmerge.graders.sandbox import python_argv, run_sandboxed

_FENCE = re.compile(r"```([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)
_MAX_ROWS = 100_000

_RUNNER = r"""
import json, sqlite3, sys, time

with open("config.json") as f:
    cfg = json.load(f)
db = sqlite3.connect(":memory:")
try:
    if cfg["db"]:
        source = sqlite3.connect("file:db.sqlite?mode=ro&immutable=1", uri=True)
        source.backup(db)
        source.close()
    else:
        db.executescript(cfg["schema"])
except sqlite3.Error as e:
    print(json.dumps({"setup_error": str(e)}))
    sys.exit(0)
db.execute("PRAGMA query_only = ON")
READ_ONLY = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, 33}  # 33: SQLITE_RECURSIVE
db.set_authorizer(lambda action, *args: sqlite3.SQLITE_OK if action in READ_ONLY else sqlite3.SQLITE_DENY)


def value(v):
    return "X'" + v.hex().upper() + "'" if isinstance(v, bytes) else v


def run(query):
    if query is None:
        return None
    deadline = time.monotonic() + cfg["timeout_s"]
    db.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
    try:
        rows = db.execute(query).fetchmany(cfg["max_rows"] + 1)
    except (sqlite3.Error, sqlite3.Warning) as e:
        msg = f"query ran past its {cfg['timeout_s']} s limit" if str(e) == "interrupted" else str(e)
        return {"error": msg}
    if len(rows) > cfg["max_rows"]:
        return {"error": f"more than {cfg['max_rows']} rows"}
    return {"rows": [[value(v) for v in row] for row in rows]}


print(json.dumps({"reference": run(cfg["reference"]), "answer": run(cfg["answer"])}))
"""


def extract_sql(answer: str) -> str:
    """The last ```sql block, else the last untagged ``` block, else the whole answer."""
    blocks = _FENCE.findall(answer)
    for tags in (("sql", "sqlite"), ("",)):
        tagged = [body for lang, body in blocks if lang.lower() in tags]
        if tagged:
            return tagged[-1].strip()
    return answer.strip()


def has_top_level_order_by(query: str) -> bool:
    """ORDER BY outside parentheses, string literals, quoted names and comments."""
    text = re.sub(
        r"--[^\n]*|/\*.*?\*/|'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|`[^`]*`|\[[^\]]*\]", " ", query, flags=re.S
    )
    depth, top = 0, []
    for ch in text:
        depth += ch == "("
        top.append(ch if depth == 0 else " ")
        depth -= ch == ")" and depth > 0
    return re.search(r"\border\s+by\b", "".join(top), re.IGNORECASE) is not None


def _norm(v: Any) -> Any:
    if isinstance(v, float) and v == v and abs(v) != float("inf"):
        r = round(v, 6) + 0.0  # + 0.0 turns -0.0 into 0.0
        return int(r) if r.is_integer() else r
    return v


def _rows(rows: list[list[Any]]) -> list[tuple[Any, ...]]:
    return [tuple(_norm(v) for v in row) for row in rows]


def same_result(got: list[Any], want: list[Any], ordered: bool) -> bool:
    """Whether two query results are the same answer: as lists when `ordered`, else as multisets of rows, with
    floats rounded to 6 decimals and integral floats equal to integers."""
    g, w = _rows(got), _rows(want)
    return g == w if ordered else Counter(g) == Counter(w)


def _difference(got: list[tuple[Any, ...]], want: list[tuple[Any, ...]], ordered: bool) -> str:
    head = f"got {len(got)} rows, want {len(want)}"
    if ordered and Counter(got) == Counter(want):
        return f"{head}; the same rows in another order (the reference query has ORDER BY)"
    if ordered:
        for i in range(max(len(got), len(want))):
            g, w = got[i] if i < len(got) else None, want[i] if i < len(want) else None
            if g != w:
                return f"{head}; first difference at row {i}: got {g}, want {w}"
    missing, extra = Counter(want) - Counter(got), Counter(got) - Counter(want)
    parts = [head]
    if missing:
        parts.append(f"missing {next(iter(missing))}")
    if extra:
        parts.append(f"unexpected {next(iter(extra))}")
    return "; ".join(parts)


class SqlSpec(GraderSpec):
    schema_sql: str | None = Field(None, alias="schema")  # "schema" would shadow a BaseModel method
    db: str | None = None
    expected: list[list[Any]] | None = None
    ordered: bool | None = None
    timeout_s: float = 5
    memory_mb: int = 1024


def grade_sql(answer: str, reference: str, spec: SqlSpec) -> Grade:
    if (spec.schema_sql is None) == (spec.db is None):
        raise ValueError(
            "sql grader: the spec needs exactly one of 'schema' (SQL script) or 'db' (a SQLite file)"
        )
    query = extract_sql(answer)
    if not query:
        return Grade(False, "empty answer")
    expected = spec.expected
    if expected is None and not reference.strip():
        raise ValueError("sql grader: no reference query and no 'expected' rows")
    timeout_s = spec.timeout_s
    files: dict[str, str | bytes] = {"runner.py": _RUNNER}
    if spec.db is not None:
        files["db.sqlite"] = Path(spec.db).read_bytes()
    cfg = {
        "db": spec.db is not None,
        "schema": spec.schema_sql or "",
        "reference": None if expected is not None else reference,
        "answer": query,
        "timeout_s": timeout_s,
        "max_rows": _MAX_ROWS,
    }
    files["config.json"] = json.dumps(cfg)
    run = run_sandboxed(
        files, python_argv("runner.py"), timeout_s=2 * timeout_s + 10, cpu_s=int(2 * timeout_s + 5),
        memory_mb=spec.memory_mb, file_mb=256, max_output_kb=256 * 1024,
    )  # fmt: skip
    if run.returncode != 0 or run.timed_out:
        reason = run.killed_reason or (run.stderr.strip().splitlines() or [f"exit {run.returncode}"])[-1]
        return Grade(False, f"the query could not be run: {reason}")
    out = json.loads(run.stdout)
    if "setup_error" in out:
        source = f"database {spec.db}" if spec.db is not None else "schema script"
        raise ValueError(f"sql grader: the {source} failed to load: {out['setup_error']}")
    if expected is None and "error" in out["reference"]:
        raise ValueError(f"sql grader: the reference query failed: {out['reference']['error']}")
    if "error" in out["answer"]:
        return Grade(False, f"sqlite error: {out['answer']['error']}")
    want = expected if expected is not None else out["reference"]["rows"]
    ordered = (
        spec.ordered
        if spec.ordered is not None
        else bool(reference.strip()) and has_top_level_order_by(reference)
    )
    ok = same_result(out["answer"]["rows"], want, ordered)
    return Grade(ok, "" if ok else _difference(_rows(out["answer"]["rows"]), _rows(want), ordered))


SQL = Grader("sql", SqlSpec, grade_sql, needs_reference=lambda spec: spec.expected is None)
