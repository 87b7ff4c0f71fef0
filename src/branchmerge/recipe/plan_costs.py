"""The numbers of a dry run: requests, tokens and money per teacher and judge, tokens and GPU memory per
training stage. Counts before generation are upper bounds (every request answers, nothing is filtered); the
plan says which figures are exact (a cached stage) and which are bounds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from branchmerge.recipe.resolve import branch_plans, evaluated_models, expert_groups
from branchmerge.recipe.schema import Recipe, TeacherSpec
from branchmerge.records import Problem, SFTExample, read_jsonl
from branchmerge.train.memory import Kind, Shape, estimate

Counter = Callable[[str], int]


@dataclass
class TeacherLoad:
    who: str  # teacher name
    role: str  # "generate", "judge: rv_cd", "judge: eval", ...
    requests: int | None
    prompt_tokens: int | None
    completion_tokens: int | None  # at most (max_tokens per request)
    expected_completion: int | None  # at generate.expected_tokens per request, when given
    cost: float | None  # USD at most (None: no prices in the recipe, or counts unknown)
    expected_cost: float | None


@dataclass
class TrainLoad:
    name: str
    method: str
    steps: int
    batch_size: int
    seq_len: int
    examples: str  # "1200" (built SFT set) or "≤ 3000" (before generation)
    tokens: int | None  # tokens the stage trains on: steps × batch × mean example length
    memory_gib: float | None
    memory_note: str


def prompt_counter(student: Path | None) -> tuple[Counter, str]:
    """Token counts with the student's tokenizer when it is local, else 4 characters per token."""
    if student is not None:
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(student)
            return (lambda text: len(tok(text).input_ids)), "the student's tokenizer"
        except (OSError, ValueError):
            pass
    return (lambda text: max(1, len(text) // 4)), "4 characters per token"


def _cost(t: TeacherSpec, prompt: int | None, completion: int | None) -> float | None:
    if prompt is None or completion is None or t.price_prompt is None or t.price_completion is None:
        return None
    return (prompt * t.price_prompt + completion * t.price_completion) / 1e6


def _load(
    t: TeacherSpec, role: str, requests: int | None, prompt: int | None, max_tokens: int, expected: int | None
) -> TeacherLoad:
    completion = None if requests is None else requests * max_tokens
    exp = None if requests is None or expected is None else requests * min(expected, max_tokens)
    return TeacherLoad(
        t.name, role, requests, prompt, completion, exp, _cost(t, prompt, completion), _cost(t, prompt, exp)
    )


def estimate_teachers(
    recipe: Recipe,
    problems: list[Problem] | None,
    counter: tuple[Counter, str],
    eval_sets: dict[str, list[Problem] | None],
) -> list[TeacherLoad]:
    """Generation per teacher, then each judge's requests (process steps, judge-graded eval items)."""
    count, _ = counter
    g = recipe.generate
    per_problem = g.n * len(g.temperatures)
    q_tokens = None if problems is None else sum(count(p.question) for p in problems)
    n_problems = None if problems is None else len(problems)
    loads = []
    generating = [t for t in recipe.teachers if t.generates]
    for t in generating:
        requests = None if n_problems is None else n_problems * per_problem
        prompt = None if q_tokens is None else q_tokens * per_problem
        loads.append(_load(t, "generate", requests, prompt, g.max_tokens, g.expected_tokens))
    traces = None if n_problems is None else n_problems * per_problem * len(generating)
    trace_len = g.expected_tokens or g.max_tokens
    p = recipe.process
    if p.judge is not None:
        judge = next(t for t in recipe.teachers if t.name == p.judge)
        jmax = p.judging.max_tokens
        if "difficulty" in p.steps and p.difficulty.method == "judge":
            loads.append(_load(judge, "judge: difficulty", n_problems, q_tokens, jmax, None))
        # a trace's prompt: its question and the trace itself (q_tokens and traces are None together)
        with_trace = None
        if q_tokens is not None and traces is not None:
            with_trace = q_tokens * per_problem * len(generating) + traces * trace_len
        if "rv_cd" in p.steps:
            loads.append(
                _load(judge, "judge: rv_cd", None if traces is None else 2 * traces,
                      None if with_trace is None else 2 * with_trace, jmax, None)
            )  # fmt: skip
        if "rewrite" in p.steps:
            loads.append(_load(judge, "judge: rewrite", traces, with_trace, g.max_tokens, g.expected_tokens))
    if recipe.eval.judge is not None:
        judge = next(t for t in recipe.teachers if t.name == recipe.eval.judge)
        models = len(evaluated_models(recipe))
        requests, prompt = 0, 0
        for s in recipe.eval.sets:
            items = eval_sets.get(s.label or s.name) or []
            judged = [x for x in items if x.grader.get("type") == "judge"]
            n = recipe.eval.sampling(s)["n"]
            requests += len(judged) * n * models
            prompt += sum(count(x.question) for x in judged) * n * models
        answer = recipe.eval.max_tokens
        loads.append(_load(judge, "judge: eval", requests, prompt + requests * answer, 1024, None))
    return loads


def _example_bound(
    recipe: Recipe, problems: list[Problem] | None, group: str | None, count: Counter
) -> tuple[int, float] | None:
    """(examples at most, mean tokens) for a branch before any trace exists."""
    if problems is None:
        return None
    g = recipe.generate
    if group is not None and recipe.train.experts == "domain":
        problems = [p for p in problems if p.domain == group]
    teachers = (
        1
        if group is not None and recipe.train.experts == "teacher"
        else sum(t.generates for t in recipe.teachers)
    )
    n = len(problems) * g.n * len(g.temperatures) * teachers
    if not problems:
        return n, 0.0
    mean_q = sum(count(p.question) for p in problems) / len(problems)
    return n, min(mean_q + (g.expected_tokens or g.max_tokens), recipe.build_sft.max_length)


def estimate_training(
    recipe: Recipe,
    problems: list[Problem] | None,
    counter: tuple[Counter, str],
    shape: Shape | None,
    sft_file: Path | None,
) -> list[TrainLoad]:
    """Every training stage: its examples and tokens (exact once the SFT set is built) and GPU memory."""
    from branchmerge.train.branches import MIXTURE, expert_name
    from branchmerge.train.curriculum import select

    t = recipe.train
    s = t.settings
    loads = []
    # Without packing a row is one example, which build-sft caps at its max_length.
    seq = s.max_length if s.packing else min(s.max_length, recipe.build_sft.max_length)
    mem = _memory(shape, s.method, s.batch_size, seq, s.gradient_checkpointing, s.lora_r)
    if sft_file is not None and sft_file.exists():
        built = read_jsonl(sft_file, SFTExample)
        for plan in branch_plans(recipe, built):
            chosen = select(built, plan.where)
            steps = (
                sum(st.max_steps or 0 for st in plan.curriculum)
                if plan.curriculum
                else plan.settings.max_steps
            )
            mean = sum(e.num_tokens for e in chosen) / max(1, len(chosen))
            per_row = s.max_length if s.packing else mean
            loads.append(
                TrainLoad(plan.name, s.method, steps, s.batch_size, seq, str(len(chosen)),
                          int(steps * s.batch_size * per_row), *mem)
            )  # fmt: skip
    else:
        groups: list[tuple[str, str | None]] = [(expert_name(g), g) for g in expert_groups(recipe)]
        for name, group in [*groups, *([(MIXTURE, None)] if t.mixture else [])]:
            steps = _steps(
                recipe, len(groups) if group is None and t.mixture_budget == "sum" and groups else 1
            )
            bound = _example_bound(recipe, problems, group, counter[0])
            row: float | None = s.max_length if s.packing else None if bound is None else bound[1]
            tokens = None if row is None else int(steps * s.batch_size * row)
            examples = "?" if bound is None else f"≤ {bound[0]}"
            loads.append(TrainLoad(name, s.method, steps, s.batch_size, seq, examples, tokens, *mem))
    if recipe.reward_models is not None:
        r = recipe.reward_models.settings
        rmem = _memory(shape, "reward", r.batch_size, r.max_length, r.gradient_checkpointing)
        for target in recipe.reward_models.targets:
            loads.append(TrainLoad(f"reward-{target}", "full", r.max_steps, r.batch_size, r.max_length, "scored traces", None, *rmem))  # fmt: skip
    if recipe.grpo is not None:
        gs = recipe.grpo.settings
        scorers = len(recipe.reward_models.targets) if recipe.reward_models else 0
        gmem = _memory(
            shape, "grpo", gs.batch_size, 512, gs.gradient_checkpointing,
            completion_len=gs.max_completion_length, reference=gs.beta > 0, scorers=scorers,
        )  # fmt: skip
        n = len(problems) if problems is not None else None
        used = "?" if n is None else str(min(n, recipe.grpo.problems or n))
        loads.append(TrainLoad(recipe.grpo.name, "grpo", gs.max_steps, gs.batch_size, gs.max_completion_length, f"{used} problems", gs.max_steps * gs.batch_size * gs.max_completion_length, *gmem))  # fmt: skip
    return loads


def _steps(recipe: Recipe, experts: int) -> int:
    """Steps of one branch before the SFT set exists: a curriculum stage given in epochs counts as the run's
    max_steps (its real length depends on how many examples survive processing)."""
    t = recipe.train
    if t.curriculum:
        return experts * sum(st.max_steps or t.settings.max_steps for st in t.curriculum)
    return experts * t.settings.max_steps


def _memory(
    shape: Shape | None, kind: Kind, batch: int, seq: int, ckpt: bool, lora_r: int = 16, **kw: object
) -> tuple[float | None, str]:
    if shape is None:
        return None, "no student config"
    e = estimate(shape, kind, batch_size=batch, seq_len=seq, checkpointing=ckpt, lora_r=lora_r, **kw)  # type: ignore[arg-type]
    return round(e.gib(), 1), e.note
