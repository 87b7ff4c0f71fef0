"""Standard benchmark sets read from local files in their published layouts, one module per family:

| set | module | published columns read | grader |
|---|---|---|---|
| math500 | math_sets | problem, answer (or solution's last \\boxed{}), subject, level, unique_id | math |
| aime, aime2024, aime2025 | math_sets | problem/Problem/question, answer/Answer (integer 0-999), id/ID | math |
| gsm8k | math_sets | question, answer ("... #### N") | numeric on N (the answer's final number), \\boxed{} asked for |
| gpqa-diamond | gpqa | Question, Correct Answer, Incorrect Answer 1-3, Record ID, Subdomain | choice, options shuffled by seed |
| humaneval | code_sets | task_id, prompt, canonical_solution, test, entry_point | code: test + check(entry_point) |
| livecodebench | code_sets | question_id, question_content, starter_code, public/private_test_cases, metadata | code: stdin_tests or asserts |
| ten-domain | ten_domain | question_category, difficulty_level, question, guide_text, answer, success_criteria | math (math answers), judge on success_criteria (the rest) |

`branchmerge.evaluate.loaders.load_set` is the entry point; `SETS` is the registry.
"""

from branchmerge.evaluate.sets.base import Row, StandardSet
from branchmerge.evaluate.sets.registry import SETS, find_set

__all__ = ["SETS", "Row", "StandardSet", "find_set"]
