"""mdr domain `ethics`: ethical dilemma evaluation, graded by an LLM judge against a written rubric (grader
`judge`; see judge/rubric.py).

The rubric grades the reasoning, never the verdict: an answer passes when it identifies the stakeholders, names
the principles in tension, weighs them for this case, and reaches a conclusion it justifies, whatever that
conclusion is on a contested question. The `reference` holds notes on considerations, with more than one
defensible conclusion where there is one. Levels add stakeholders, principles, uncertain facts, law against
morals, and demands (alternatives, the strongest objection, second-order effects). Generated items combine a
role, a conflict between two principles and complications drawn by level.
"""

from __future__ import annotations

import random

from branchmerge.evaluate.mdr.base import Domain
from branchmerge.evaluate.mdr.scenario import rubric_text
from branchmerge.judge import judge_spec
from branchmerge.records import Problem

NAME = "ethics"
CLOSING = "What should they do, and why? Explain your reasoning."
ANY_VERDICT = (
    "Any conclusion passes when it is reasoned as above; the answer is not failed for disagreeing with the "
    "reference notes."
)


def _points(level: int, stakeholders: str, principles: str) -> list[str]:
    """The rubric: more demands with each level."""
    points = [
        f"Identifies the main stakeholders ({stakeholders}) and what each stands to gain or lose.",
        f"Names the principles or values in tension ({principles}).",
        "Reaches a clear conclusion and gives reasons for it.",
    ]
    if level >= 3:
        points.insert(2, "Weighs the principles against each other with reasons specific to this case.")
    if level >= 5:
        points.append("Considers at least one alternative or compromise course of action.")
    if level >= 7:
        points.append("States the strongest objection to its conclusion and responds to it.")
    if level >= 9:
        points.append("Takes account of the uncertain facts and of consequences beyond the immediate case.")
    return [*points, ANY_VERDICT]


def _problem(pid: str, level: int, dilemma: str, stakeholders: str, principles: str, notes: str) -> Problem:
    question = f"{dilemma}\n\n{CLOSING}"
    return Problem(
        id=pid,
        domain=NAME,
        question=question,
        reference=notes,
        grader=judge_spec(question, rubric_text(_points(level, stakeholders, principles)), pid),
        level=level,
        source="mdr",
    )


# (dilemma, stakeholders, principles, notes), level 1..10
FIXED: list[tuple[str, str, str, str]] = [
    ("A friend asks for your honest opinion of a painting they will enter in a competition tomorrow. You think "
     "it is weak.", "the friend, you, the friendship", "honesty and kindness",
     "Tactful honesty about specific points, encouragement; or kindness now since little can change by tomorrow."),
    ("You find a wallet with $200 and an ID card on a train. The owner's address is two hours away, and the train "
     "company's lost-property office is known to be slow.", "the owner, you, the train company",
     "duty to return property and the cost to yourself",
     "Return it via the office, the police or by contacting the owner; keeping the money is not justified."),
    ("A teacher finds that a usually honest student copied a homework assignment during a week when the "
     "student's parent was in hospital. School policy says copying means a zero and a report to the parents.",
     "the student, the teacher, the other students, the parents",
     "fairness and consistency against compassion",
     "Apply the rule, or talk with the student and allow a redo; fairness to the class and the student's "
     "circumstances both matter."),
    ("An employee notices that a colleague, a single parent in financial trouble, regularly adds small false "
     "amounts to expense claims, about $50 a month.", "the colleague, the employee, the company, other staff",
     "honesty and loyalty to the employer against loyalty and compassion to a colleague",
     "Talking to the colleague first, pointing to hardship support, or reporting; silence makes the employee "
     "complicit; the amount is small but the breach is ongoing."),
    ("A doctor diagnoses a patient with a hereditary condition. The patient asks the doctor not to tell their "
     "adult children, who could have it and could benefit from early screening.",
     "the patient, the adult children, the doctor",
     "patient confidentiality and autonomy against preventing harm to others",
     "Respect confidentiality while persuading the patient; disclosure may be justified only for serious, "
     "preventable harm; professional rules differ by country."),
    ("A company building self-driving cars must decide how its cars act in rare unavoidable crashes: protect "
     "passengers first, or minimise total injuries even if that puts passengers at greater risk.",
     "passengers, pedestrians and other road users, the company, regulators",
     "duty to customers against equal concern for everyone's safety",
     "Minimising harm treats people equally but buyers may avoid such cars, slowing adoption of safer "
     "technology; public rules rather than company choice; transparency."),
    ("A journalist receives leaked documents showing that a factory hid safety violations that injured "
     "workers. The documents also contain the home addresses and medical records of dozens of employees.",
     "the injured workers, the employees named in the files, the public, the company, the source",
     "the public interest in exposure against privacy and harm to those named",
     "Publish the violations while redacting personal data; verify the documents; protect the source."),
    ("A hospital has one free intensive-care bed. Two patients need it: a 30-year-old with a 40% chance of "
     "survival with treatment, and a 70-year-old with an 80% chance. Doctors disagree about the estimates.",
     "both patients and their families, the doctors, future patients",
     "maximising lives or life-years saved against treating people equally",
     "Survival chances favour the older patient, life-years may favour the younger; uncertain estimates; a "
     "transparent triage protocol rather than ad hoc choice."),
    ("A city considers using facial recognition cameras in public spaces to find missing children and wanted "
     "suspects. Trials elsewhere found several missing children but misidentified people from some ethnic "
     "groups more often; the system would be run by a private contractor.",
     "missing children and families, the public, misidentified people, the police, the contractor",
     "safety against privacy, freedom and equal treatment",
     "Benefits are real but bias and mass surveillance harm; limited use with oversight, audits, warrants, "
     "or rejection; function creep."),
    ("An AI lab finds a method that speeds up drug discovery but could also help design toxic chemicals. "
     "Funders want open publication, other labs may publish something similar within a year, and no law "
     "forbids publishing.", "patients, the public, the research community, the lab, funders",
     "open science and benefit against preventing misuse; legal permission against moral responsibility",
     "Staged or partial release, review by biosecurity experts, sharing with vetted groups; 'others will "
     "publish anyway' is uncertain and does not remove responsibility."),
]  # fmt: skip


def items() -> list[Problem]:
    return [_problem(f"mdr-{NAME}-L{level}", level, *item) for level, item in enumerate(FIXED, start=1)]


# ------------------------------------------------------------------------------------------ generation

ROLES = (
    ("a nurse", "patients"), ("an accountant at a charity", "donors"), ("a software engineer", "users"),
    ("a school principal", "pupils"), ("a city planner", "residents"), ("a research scientist", "study participants"),
    ("a shop manager", "customers"), ("a social worker", "clients"),
)  # fmt: skip
CONFLICTS = (
    ("learns that a superior has quietly changed records to hide a mistake that harmed some of the {people}",
     "honesty and accountability against loyalty and job security"),
    ("is asked by one of the {people} to keep a secret that may put someone else at risk",
     "confidentiality against preventing harm"),
    ("must choose which of two groups of {people} gets a scarce resource that only one group can have",
     "fairness against the greatest benefit"),
    ("is told to follow a new rule that they believe treats some {people} unfairly",
     "following rules and authority against justice"),
    ("could report a popular colleague's misconduct that has so far harmed no one directly",
     "integrity against loyalty and harmony"),
)  # fmt: skip
COMPLICATIONS = (
    "The facts are uncertain: what they know comes second-hand.",
    "Acting would break a promise they made earlier.",
    "What is legal here and what seems right point in different directions.",
    "Speaking up could cost them their job, and they support a family.",
    "Whatever they do will be public and may set a precedent for others.",
    "Someone vulnerable depends on them and would be hurt by either choice.",
)


def generate(level: int, seed: int) -> Problem:
    rng = random.Random(f"mdr-{NAME}:{level}:{seed}")
    (role, people), (conflict, principles) = rng.choice(ROLES), rng.choice(CONFLICTS)
    complications = rng.sample(COMPLICATIONS, (level - 1) // 3)  # none at levels 1-3 ... three at level 10
    dilemma = " ".join([f"{role.capitalize()} {conflict.format(people=people)}.", *complications])
    stakeholders = f"{role.split(' ', 1)[1]} themselves, the {people}, the employer or institution"
    notes = (
        f"The tension is {principles}. Several conclusions are defensible; a strong answer weighs "
        f"them for this case. Complications to take into account: {' '.join(complications) or 'none'}"
    )
    return _problem(f"mdr-{NAME}-L{level}-s{seed}", level, dilemma, stakeholders, principles, notes)


DOMAIN = Domain(NAME, items, generate)  # collected by base.MODULES, in report order
