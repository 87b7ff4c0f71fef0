"""`branchmerge collect`: problems from local files and `datasets` datasets, mapped to Problem records,
exact duplicates removed, and resampled per domain (caps or weights), as DistilQwen's data collector does.

A spec (YAML) lists sources and the resampling:

    sources:
      - path: data/math.parquet                # .jsonl/.json, .parquet, .csv, a save_to_disk folder,
        fields: {question: problem, reference: answer}   # or a dataset name (needs the Hub)
        domain: math                           # every row's domain, or map a column with fields.domain
        grader: {type: math}
      - path: data/code.jsonl
        fields: {question: prompt, reference: tests, domain: category, id: task_id}
    caps: {math: 5000}                         # at most this many per domain
    weights: {math: 2, code: 1}                # with total: the share of each domain
    total: 6000
    seed: 0

Files are read with pyarrow and the standard library (no cache written); `datasets` reads saved folders and
names. Duplicates are questions equal after trimming, collapsing whitespace and case-folding; the first
source listed wins. Resampling draws without replacement from a seeded generator, so a rerun gives the same
problems; a domain with fewer problems than its share keeps them all and the table shows the shortfall.
"""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from branchmerge.cot.text import normalize
from branchmerge.errors import BranchmergeError
from branchmerge.records import Problem, write_jsonl

T = TypeVar("T")
PROBLEM_FIELDS = ("id", "domain", "question", "reference", "level", "difficulty")


class SourceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    split: str = "train"  # for datasets folders and names
    fields: dict[str, str] = Field(
        default_factory=dict
    )  # Problem field -> column (question/reference default)
    domain: str | None = None  # one domain for every row (else fields.domain)
    grader: dict[str, Any] = Field(default_factory=lambda: {"type": "exact"})
    limit: int | None = Field(None, gt=0)  # the first N rows only

    @model_validator(mode="after")
    def _known_fields(self) -> SourceSpec:
        unknown = sorted(set(self.fields) - set(PROBLEM_FIELDS))
        if unknown:
            raise ValueError(f"fields: {unknown} are not Problem fields (known: {list(PROBLEM_FIELDS)})")
        if self.domain is None and "domain" not in self.fields:
            raise ValueError("give 'domain' (one for every row) or map a column with fields.domain")
        return self


class CollectSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sources: list[SourceSpec] = Field(min_length=1)
    caps: dict[str, int] = Field(default_factory=dict)
    weights: dict[str, float] = Field(default_factory=dict)
    total: int | None = Field(None, gt=0)
    seed: int = 0

    @model_validator(mode="after")
    def _weights_need_total(self) -> CollectSpec:
        if self.weights and self.total is None:
            raise ValueError("weights need 'total' (how many problems in all)")
        if any(w < 0 for w in self.weights.values()) or any(c < 0 for c in self.caps.values()):
            raise ValueError("caps and weights must be >= 0")
        return self


class DomainCount(BaseModel):
    domain: str
    read: int
    duplicates: int
    kept: int
    target: int | None = None  # from caps / weights


class CollectReport(BaseModel):
    out_path: str
    rows: list[DomainCount]

    @property
    def kept(self) -> int:
        return sum(r.kept for r in self.rows)


def load_collect_spec(path: str | Path) -> CollectSpec:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return CollectSpec.model_validate(data)
    except (OSError, yaml.YAMLError) as e:
        raise BranchmergeError(f"{path}: cannot read ({e})") from None
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "spec"
        raise BranchmergeError(f"{path}: {where}: {err['msg']}") from None


def read_rows(source: SourceSpec, base_dir: Path = Path(".")) -> Iterator[dict[str, Any]]:
    """The rows of one source as dicts, in order."""
    path = Path(source.path) if Path(source.path).is_absolute() else base_dir / source.path
    suffix = path.suffix.lower()
    if path.is_file() and suffix in (".jsonl", ".json"):
        text = path.read_text(encoding="utf-8")
        if suffix == ".json" and text.lstrip().startswith("["):
            yield from json.loads(text)
            return
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError as e:
                    raise BranchmergeError(f"{path}:{n}: not valid JSON ({e})") from None
    elif path.is_file() and suffix == ".parquet":
        import pyarrow.parquet as pq

        yield from pq.read_table(path).to_pylist()
    elif path.is_file() and suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            yield from csv.DictReader(f)
    elif path.is_dir():
        import datasets

        data = datasets.load_from_disk(str(path))
        if isinstance(data, datasets.DatasetDict):
            if source.split not in data:
                raise BranchmergeError(f"{path}: no split '{source.split}' (has {sorted(data)})")
            data = data[source.split]
        yield from data
    elif not path.exists() and "/" in source.path and not source.path.startswith((".", "/")):
        import datasets  # a Hub name such as "HuggingFaceH4/MATH-500": needs the network

        try:
            yield from datasets.load_dataset(source.path, split=source.split)
        except Exception as e:
            raise BranchmergeError(f"{source.path}: cannot load dataset ({type(e).__name__}: {e})") from None
    else:
        raise BranchmergeError(f"{path}: not found, or not .jsonl/.json/.parquet/.csv or a datasets folder")


def to_problems(source: SourceSpec, rows: Iterator[dict[str, Any]]) -> list[Problem]:
    """Map rows to Problems; a missing column is one error naming the source, row and column."""
    mapping = {"question": "question", "reference": "reference"} | source.fields
    stem = Path(source.path).stem or source.path
    out = []
    for i, row in enumerate(rows):
        if source.limit is not None and i >= source.limit:
            break
        values: dict[str, Any] = {}
        for field, column in mapping.items():
            if column not in row:
                raise BranchmergeError(
                    f"{source.path}: row {i} has no column '{column}' (for {field}); columns: {sorted(row)}"
                )
            values[field] = row[column]
        for field in ("id", "domain", "question", "reference", "difficulty"):
            if field in values and values[field] is not None:
                values[field] = str(values[field])
        if "level" in values and values["level"] is not None:
            values["level"] = int(values["level"])
        values.setdefault("id", f"{stem}-{i}")
        values.setdefault("domain", source.domain)
        out.append(Problem(**values, grader=source.grader, source=source.path))
    return out


def dedup(problems: list[Problem]) -> tuple[list[Problem], Counter[str]]:
    """Drop exact duplicate questions (after whitespace and case normalisation); first one wins."""
    seen: set[str] = set()
    kept, removed = [], Counter[str]()
    for p in problems:
        key = normalize(p.question)
        if key in seen:
            removed[p.domain] += 1
        else:
            seen.add(key)
            kept.append(p)
    return kept, removed


def targets(
    available: Counter[str],
    caps: dict[str, int] | None = None,
    weights: dict[str, float] | None = None,
    total: int | None = None,
) -> dict[str, int]:
    """How many items each domain keeps: its weighted share of `total` (largest remainders), then caps.
    Shared by `collect` (problems) and `process sample` (traces)."""
    out = dict(available)
    if weights:
        if total is None:
            raise BranchmergeError("weights need a total (how many in all)")
        weight_sum = sum(weights.get(d, 0.0) for d in available)
        if weight_sum <= 0:
            raise BranchmergeError("weights: no domain present has a positive weight")
        exact = {d: total * weights.get(d, 0.0) / weight_sum for d in available}
        out = {d: int(x) for d, x in exact.items()}
        by_remainder = sorted(exact, key=lambda d: exact[d] - out[d], reverse=True)
        for d in by_remainder[: total - sum(out.values())]:
            out[d] += 1
    for d, cap in (caps or {}).items():
        if d in out:
            out[d] = min(out[d], cap)
    return out


def draw(items: list[T], n: int, rng: random.Random) -> list[T]:
    """n of the items without replacement, in their original order (all of them when n >= len)."""
    if n >= len(items):
        return list(items)
    picked = set(rng.sample(range(len(items)), n))
    return [x for i, x in enumerate(items) if i in picked]


def collect(spec: CollectSpec, out_path: str | Path, base_dir: str | Path = ".") -> CollectReport:
    """Read, map, deduplicate and resample every source into `out_path` (Problems JSONL, written atomically)."""
    problems: list[Problem] = []
    for source in spec.sources:
        problems += to_problems(source, read_rows(source, Path(base_dir)))
    ids = Counter(p.id for p in problems)
    clash = [i for i, c in ids.items() if c > 1]
    if clash:
        raise BranchmergeError(
            f"problem id '{clash[0]}' appears in more than one row; map a unique id column"
        )
    read = Counter(p.domain for p in problems)
    kept, removed = dedup(problems)
    available = Counter(p.domain for p in kept)
    want = targets(available, spec.caps, spec.weights, spec.total)
    rng = random.Random(spec.seed)
    chosen: list[Problem] = []
    for domain in sorted(available):
        chosen += draw([p for p in kept if p.domain == domain], want[domain], rng)
    write_jsonl(out_path, chosen)
    final = Counter(p.domain for p in chosen)
    resampled = bool(spec.caps or spec.weights)
    rows = [
        DomainCount(
            domain=d,
            read=read[d],
            duplicates=removed[d],
            kept=final[d],
            target=want[d] if resampled else None,
        )
        for d in sorted(read)
    ]
    return CollectReport(out_path=str(out_path), rows=rows)
