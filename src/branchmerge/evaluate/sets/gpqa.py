"""GPQA-Diamond (Rein et al. 2023, `gpqa_diamond.csv` of Idavidrein/gpqa) as four-option multiple choice.

Published columns read: Question, Correct Answer, Incorrect Answer 1-3, and, when present, Record ID,
Explanation, High-level domain, Subdomain, Writer's Difficulty Estimate.

The published file always lists the correct answer first, so the options are shuffled: item by item, with a
generator seeded by `f"{seed}:{item id}"` (Python's string seeding hashes with SHA-512, so it does not depend
on PYTHONHASHSEED or on the order of rows). A rerun with the same seed gives the same letters; different items
get different permutations, so the correct letter is not always A. The question text ends with the lettered
options ("A) ...") and `CHOICE_FORMAT` (answer with the letter); the reference is the correct letter and the
grader is `choice` over A-D; `meta.choices` keeps the letter -> text table and `meta.correct_answer` the text, so the permutation can be checked.
Domain "science"; GPQA's own domain (Physics, Chemistry, Biology) and subdomain are in meta.
"""

from __future__ import annotations

import random

from branchmerge.evaluate.sets.base import Row, StandardSet
from branchmerge.records import Problem

LETTERS = ("A", "B", "C", "D")
INCORRECT = ("Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
# The published questions do not say how to answer; the choice grader reads a letter, not the option's text.
CHOICE_FORMAT = (
    "End your answer with a line of the form 'Answer: X', where X is the letter of the correct option."
)


def shuffled_options(correct: str, incorrect: list[str], seed: int, item_id: str) -> tuple[list[str], str]:
    """(the four options in their shuffled order, the letter of the correct one)."""
    options = [correct, *incorrect]
    order = list(range(len(options)))
    random.Random(f"{seed}:{item_id}").shuffle(order)
    return [options[k] for k in order], LETTERS[order.index(0)]


def _gpqa(row: Row, seed: int) -> Problem:
    item_id = row.item_id("Record ID")
    correct = row.text("Correct Answer").strip()
    incorrect = [row.text(c).strip() for c in INCORRECT]
    options, letter = shuffled_options(correct, incorrect, seed, item_id)
    lettered = "\n".join(f"{k}) {text}" for k, text in zip(LETTERS, options, strict=True))
    return Problem(
        id=item_id,
        domain="science",
        question=f"{row.text('Question').strip()}\n\n{lettered}\n\n{CHOICE_FORMAT}",
        reference=letter,
        grader={"type": "choice", "choices": list(LETTERS)},
        source=row.set_name,
        meta={
            "choices": dict(zip(LETTERS, options, strict=True)),
            "correct_answer": correct,
            "shuffle_seed": seed,
            "subject": row.optional("High-level domain"),
            "subdomain": row.optional("Subdomain"),
            "writer_difficulty": row.optional("Writer's Difficulty Estimate"),
            "explanation": row.optional("Explanation"),
        },
    )


_COLUMNS = (
    "Question", "Correct Answer", *INCORRECT, "Record ID", "Explanation", "High-level domain", "Subdomain",
    "Writer's Difficulty Estimate",
)  # fmt: skip
GPQA_DIAMOND = StandardSet(
    "gpqa-diamond",
    "GPQA-Diamond: Question, Correct Answer, Incorrect Answer 1-3 -> choice grader, options shuffled by seed",
    _COLUMNS,
    _gpqa,
    "train",
)
