"""mdr domain `writing`: constrained creative writing, graded by checking every constraint (grader `constraints`).

The level is the number and strictness of the constraints: one loose word limit at level 1; at level 10 an
acrostic, a lipogram (a letter never used), required and forbidden words, exact sentence count, first and last
words and a narrow word range, all at once. The question lists the constraints in the words of
`graders.constraints.describe`, so what the model reads and what it is graded by are one spec.

Every item's `reference` is an example text that meets all its constraints (a witness that the set can be met):
written by hand for the fixed items; for generated ones, built first from a word bank under the chosen lipogram
and acrostic, with the numeric constraints then drawn around it. The witness is word salad, not a model answer.
"""

from __future__ import annotations

import random
from typing import Any

from branchmerge.evaluate.mdr.base import Domain, register
from branchmerge.graders.constraints import describe, lines, sentences, words
from branchmerge.records import Problem

NAME = "writing"


def _c(kind: str, **fields: Any) -> dict[str, Any]:
    return {"kind": kind, **fields}


# (topic, constraints, a text that meets them), level 1..10
FIXED: list[tuple[str, list[dict[str, Any]], str]] = [
    (
        "a rainy morning in a city",
        [_c("max_words", n=40)],
        "Rain taps on the window while the kettle hums. The street below is grey and quiet, and a cat watches "
        "the drops race down the glass.",
    ),
    (
        "a lighthouse",
        [_c("lines", n=2), _c("include", words=["light"])],
        "The tower keeps its light awake all night,\nso every ship can find the harbour right.",
    ),
    (
        "a forest in autumn",
        [_c("min_words", n=20), _c("max_words", n=45), _c("include", words=["amber", "wind"])],
        "The wind combs through the oaks and lifts the amber leaves into the air. They spin, settle on the path, "
        "and crackle under every step I take.",
    ),
    (
        "snow falling on a village",
        [
            _c("lines", n=3),
            _c("max_words", n=15),
            _c("include", words=["silence"]),
            _c("exclude", words=["cold", "white"]),
        ],
        "Soft flakes on the roofs\nsilence settles on the square\nsmoke curls from chimneys",
    ),
    (
        "a handmade wooden chair, as a product description",
        [
            _c("starts_with", text="This chair"),
            _c("sentences", n=3),
            _c("min_words", n=25),
            _c("max_words", n=50),
            _c("include", words=["oak", "comfort"]),
        ],
        "This chair is carved by hand from a single piece of oak. Its curved back and wide seat give lasting "
        "comfort through long evenings of reading. A coat of natural oil keeps the grain warm and easy to clean.",
    ),
    (
        "the sea",
        [
            _c("acrostic", word="WAVES"),
            _c("include", words=["salt"]),
            _c("exclude", words=["ocean", "blue"]),
            _c("min_words", n=15),
            _c("max_words", n=35),
        ],
        "Water folds over the rocks,\nAnd the gulls cry above the foam,\nVessels lean into the wind,\n"
        "Every breath tastes of salt,\nSand keeps the shape of the tide.",
    ),
    (
        "the opening of a mystery story",
        [
            _c("starts_with", text="The door"),
            _c("ends_with", text="again"),
            _c("sentences", n=4),
            _c("min_words", n=35),
            _c("max_words", n=60),
            _c("include", words=["key", "midnight"]),
            _c("exclude", words=["suddenly", "dark"]),
        ],
        "The door was locked when Ada came home at midnight. Her key turned, but something inside the lock "
        "clicked twice. On the table lay a letter in her own handwriting, dated tomorrow. She read the first "
        "line and then, slowly, read it again.",
    ),
    (
        "a city at night",
        [
            _c("no_letter", letter="e"),
            _c("lines", n=3),
            _c("sentences", n=2),
            _c("min_words", n=20),
            _c("max_words", n=40),
            _c("include", words=["lamps"]),
            _c("exclude", words=["dark"]),
            _c("starts_with", text="City lamps"),
        ],
        "City lamps glow as traffic hums along long roads\nand crowds stroll past bright shops until dawn.\n"
        "A cat on a wall looks down at it all, calm and still.",
    ),
    (
        "the moon over a harbour",
        [
            _c("acrostic", word="MOON"),
            _c("no_letter", letter="s"),
            _c("include", words=["boat", "tide"]),
            _c("exclude", words=["night", "star"]),
            _c("sentences", n=2),
            _c("min_words", n=16),
            _c("max_words", n=32),
            _c("ends_with", text="home"),
        ],
        "Moonlight fell on the harbour wall.\nOld boat and pier wait on the tide,\n"
        "Only a gull calling out to the quay,\nNow the lone rower pulling home.",
    ),
    (
        "a storm arriving at dawn",
        [
            _c("acrostic", word="STORM"),
            _c("no_letter", letter="e"),
            _c("include", words=["rain", "dawn"]),
            _c("exclude", words=["wind", "cloud", "sky"]),
            _c("sentences", n=2),
            _c("min_words", n=20),
            _c("max_words", n=35),
            _c("starts_with", text="Still air"),
            _c("ends_with", text="dawn"),
        ],
        "Still air hangs on a hill,\nThick rain falls in a rush on roofs,\nOak and ash bow low,\n"
        "Roads turn to mud and pools.\nMorning brings a damp, bright dawn.",
    ),
]

_BANK_WORDS = """amber apple arch ash autumn bark barn basket beach bell birch bird bloom boat bold branch bread breeze
    bridge bright brook calm candle canyon castle cedar chalk clay cliff clock cloud coast copper coral cotton crow
    dawn deep desert dew dock door dove drift drum dune dusk eagle earth echo ember evening fable falcon feather
    fern field fire flame flint flower fog forest fountain fox frost garden gate glass glow gold grain granite
    grass gravel gull harbor harvest hawk hazel heart hill hollow honey horizon iron island ivory ivy jade jar
    journey juniper kettle key kind kite lake lamp lantern leaf light lily linen maple marble market meadow mill
    mint mist moon morning moss mountain night north oak ocean olive orchard owl paper path pearl pebble pine plum
    pond quiet quill rain raven reed ridge river road robin rope rose rust sail salt sand shadow shell shore silver
    sky slate smoke snow song spark spring star stone storm stream summer sun swallow thistle thread thunder tide
    timber torch tower trail tree valley velvet violet wagon wave well wheat willow wind window winter wolf wood
    wool yard yarrow yellow yew"""
BANK = tuple(_BANK_WORDS.split())
ACROSTICS = ("SEA", "MOON", "RAIN", "STORM", "RIVER", "GARDEN", "WINTER", "HARBOR", "FOREST", "MEADOW", "LANTERN")  # fmt: skip
LIPOGRAM_LETTERS = ("e", "a", "o", "i", "t", "s", "r", "n", "l")
TOPICS = (
    "a mountain village", "an old bridge", "the first day of spring", "a night market", "a lost key",
    "a long train journey", "a garden after rain", "a lighthouse keeper", "the edge of a desert", "a winter fair",
)  # fmt: skip
EASY = ("words", "include", "exclude", "lines", "starts_with", "sentences", "ends_with")


def _question(topic: str, constraints: list[dict[str, Any]]) -> str:
    rules = "\n".join(f"- {describe(c)}" for c in constraints)
    return (
        f"Write a short piece of creative writing about {topic}. It must meet every constraint below.\n{rules}\n"
        "Put each line of the text on its own line. Reply with the text only: no title, no notes, no quotation "
        "marks around it."
    )


def _problem(pid: str, level: int, topic: str, constraints: list[dict[str, Any]], witness: str) -> Problem:
    return Problem(
        id=pid,
        domain=NAME,
        question=_question(topic, constraints),
        reference=witness,
        grader={"type": "constraints", "constraints": constraints},
        level=level,
        source="mdr",
        meta={"topic": topic, "kinds": [c["kind"] for c in constraints]},
    )


def items() -> list[Problem]:
    return [
        _problem(f"mdr-{NAME}-L{level}", level, topic, cs, text)
        for level, (topic, cs, text) in enumerate(FIXED, start=1)
    ]


def _witness(rng: random.Random, n_lines: int, acrostic: str | None, letter: str | None) -> str:
    """Lines of bank words (none holding `letter`), each opening with the acrostic's letter when there is one;
    a line ends a sentence with probability 1/2, and the last always does."""
    bank = [w for w in BANK if letter is None or letter not in w]
    out = []
    for i in range(n_lines):
        first = rng.choice([w for w in bank if acrostic is None or w[0] == acrostic[i].lower()])
        line = [first.capitalize(), *rng.sample(bank, rng.randint(2, 6))]
        end = "." if i == n_lines - 1 or rng.random() < 0.5 else ","
        out.append(" ".join(line) + end)
    return "\n".join(out)


def _draw(level: int, rng: random.Random) -> tuple[list[dict[str, Any]], str]:
    hard = ["acrostic"] if level >= 6 else []
    hard += ["no_letter"] if level >= 8 else []
    letter = rng.choice(LIPOGRAM_LETTERS) if "no_letter" in hard else None
    usable = [a for a in ACROSTICS if letter is None or letter not in a.lower()]
    usable = [
        a
        for a in usable
        if all(any(w[0] == ch.lower() and not (letter and letter in w) for w in BANK) for ch in a)
    ]
    acrostic = rng.choice(usable) if "acrostic" in hard else None
    text = _witness(rng, len(acrostic) if acrostic else rng.randint(2, 2 + level // 2), acrostic, letter)
    pool = [k for k in EASY if not (k == "lines" and acrostic)]
    kinds = rng.sample(pool, min(level - len(hard), len(pool))) + hard
    ws = words(text)
    slack = max(2, 3 * (11 - level))
    made: list[dict[str, Any]] = []
    for kind in kinds:
        if kind == "words":
            made += [_c("min_words", n=max(1, len(ws) - slack)), _c("max_words", n=len(ws) + slack)]
        elif kind == "include":
            made.append(
                _c("include", words=sorted(rng.sample(sorted({w.lower() for w in ws}), 1 + level // 4)))
            )
        elif kind == "exclude":
            unused = sorted(set(BANK) - {w.lower() for w in ws})
            made.append(_c("exclude", words=sorted(rng.sample(unused, 1 + level // 4))))
        elif kind == "lines":
            made.append(_c("lines", n=len(lines(text))))
        elif kind == "sentences":
            made.append(_c("sentences", n=len(sentences(text))))
        elif kind == "starts_with":
            made.append(_c("starts_with", text=" ".join(ws[: 1 + level // 6])))
        elif kind == "ends_with":
            made.append(_c("ends_with", text=ws[-1]))
        elif kind == "acrostic":
            made.append(_c("acrostic", word=acrostic))
        else:
            made.append(_c("no_letter", letter=letter))
    return made, text


def generate(level: int, seed: int) -> Problem:
    rng = random.Random(f"mdr-{NAME}:{level}:{seed}")
    constraints, witness = _draw(level, rng)
    return _problem(f"mdr-{NAME}-L{level}-s{seed}", level, rng.choice(TOPICS), constraints, witness)


register(Domain(NAME, items, generate))
