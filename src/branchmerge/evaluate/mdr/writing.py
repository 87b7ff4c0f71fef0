"""mdr domain `writing`: constrained creative writing, graded by checking every constraint (grader `constraints`).

The level is the number and strictness of the constraints: one loose word limit at level 1; at level 10 an
acrostic, a lipogram (a letter never used), required and forbidden words, exact sentence count, first and last
words and a narrow word range, all at once. The question lists the constraints in the words of
`graders.constraints.describe`, so what the model reads and what it is graded by are one spec.

Constraints alone pass refusals and word salad, so every item also checks content (`constraints` kinds `topic`
and `prose`): the text names its topic (one of a few words the question lists) and reads as writing: no refusal,
at least a fifth of its words function words ("the", "of", "and"), in most of its lines. A keyword list, "I'm sorry,
I can't write that", or a fine poem about another subject fails.

Every item's `reference` is an example text that meets all its checks (a witness that the set can be met):
written by hand for the fixed items; for generated ones, built first from a word bank and a small grammar
("<Word> <prep> <det> <word> ...") under the chosen lipogram and acrostic, naming the topic, with the numeric
constraints then drawn around it. The witness is a stilted text, not a model answer.
"""

from __future__ import annotations

import random
from typing import Any

from branchmerge.evaluate.mdr.base import Domain
from branchmerge.graders.constraints import FUNCTION_WORDS, describe, lines, sentences, words
from branchmerge.records import Problem

NAME = "writing"


def _c(kind: str, **fields: Any) -> dict[str, Any]:
    return {"kind": kind, **fields}


# (topic, words naming the topic, constraints, a text that meets them), level 1..10; every item also gets the
# `topic` and `prose` checks (`_checks`)
FIXED: list[tuple[str, list[str], list[dict[str, Any]], str]] = [
    (
        "a rainy morning in a city",
        ["rain", "street", "city", "window", "drop"],
        [_c("max_words", n=40)],
        "Rain taps on the window while the kettle hums. The street below is grey and quiet, and a cat watches "
        "the drops race down the glass.",
    ),
    (
        "a lighthouse",
        ["lighthouse", "tower", "light", "ship", "harbour"],
        [_c("lines", n=2), _c("include", words=["light"])],
        "The tower keeps its light awake all night,\nso every ship can find the harbour right.",
    ),
    (
        "a forest in autumn",
        ["forest", "leaf", "leaves", "oak", "autumn", "tree"],
        [_c("min_words", n=20), _c("max_words", n=45), _c("include", words=["amber", "wind"])],
        "The wind combs through the oaks and lifts the amber leaves into the air. They spin, settle on the path, "
        "and crackle under every step I take.",
    ),
    (
        "snow falling on a village",
        ["snow", "flake", "village", "roof", "chimney"],
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
        ["chair", "seat", "wood", "oak"],
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
        ["sea", "water", "wave", "tide", "gull", "foam"],
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
        ["door", "key", "letter", "mystery", "lock"],
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
        ["city", "lamp", "traffic", "road", "shop"],
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
        ["moon", "harbour", "boat", "tide", "quay", "pier"],
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
        ["storm", "rain", "dawn", "gust"],
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
TOPICS: dict[str, tuple[str, ...]] = {  # topic -> words that name it (the `topic` check)
    "a mountain village": ("mountain", "village", "peak", "hill", "cottage", "valley"),
    "an old bridge": ("bridge", "river", "arch", "stream", "crossing", "span"),
    "the first day of spring": ("spring", "bud", "bloom", "blossom", "thaw", "lamb"),
    "a night market": ("market", "stall", "lantern", "vendor", "crowd", "bazaar"),
    "a lost key": ("key", "lock", "door", "pocket", "search", "hunt"),
    "a long train journey": ("train", "rail", "track", "carriage", "journey", "station"),
    "a garden after rain": ("garden", "rain", "puddle", "mud", "dew", "shower"),
    "a lighthouse keeper": ("lighthouse", "keeper", "lamp", "beacon", "tower", "coast"),
    "the edge of a desert": ("desert", "dune", "sand", "cactus", "oasis", "dust"),
    "a winter fair": ("fair", "winter", "snow", "frost", "booth", "sleigh"),
}
# Grammar for generated witnesses: each line is "<Word> <prep> <det> <word> <prep> <det> <word>".
DETS = ("the", "a", "my", "his", "our")
PREPS = ("of", "in", "on", "by", "at", "to", "up", "with", "from", "over", "into", "under", "near", "past")
EASY = ("words", "include", "exclude", "lines", "starts_with", "sentences", "ends_with")


def _checks(words_: list[str] | tuple[str, ...]) -> list[dict[str, Any]]:
    """What every item checks besides its constraints: on topic, and a piece of writing (not a refusal, not a
    list of words)."""
    return [_c("topic", words=list(words_)), _c("prose")]


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
        _problem(f"mdr-{NAME}-L{level}", level, topic, cs + _checks(names), text)
        for level, (topic, names, cs, text) in enumerate(FIXED, start=1)
    ]


def _witness(rng: random.Random, n_lines: int, acrostic: str | None, letter: str | None, named: str) -> str:
    """Lines "<Word> <prep> <det> <word> <prep> <det> <word>" of bank words (none holding `letter`), each opening
    with the acrostic's letter when there is one, the first naming the topic (`named`); a line ends a sentence
    with probability 1/2, and the last always does."""
    bank = [w for w in BANK if letter is None or letter not in w]
    dets = [w for w in DETS if letter is None or letter not in w]
    preps = [w for w in PREPS if letter is None or letter not in w]
    out = []
    for i in range(n_lines):
        first = rng.choice([w for w in bank if acrostic is None or w[0] == acrostic[i].lower()])
        nouns = [named if i == 0 else rng.choice(bank), rng.choice(bank)]
        line = [first.capitalize(), rng.choice(preps), rng.choice(dets), nouns[0]]
        if rng.random() < 0.6:
            line += [rng.choice(preps), rng.choice(dets), nouns[1]]
        end = "." if i == n_lines - 1 or rng.random() < 0.5 else ","
        out.append(" ".join(line) + end)
    return "\n".join(out)


def _draw(level: int, rng: random.Random) -> tuple[str, list[dict[str, Any]], str]:
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
    topics = {t: [w for w in names if letter is None or letter not in w] for t, names in TOPICS.items()}
    topic = rng.choice(sorted(t for t, names in topics.items() if names))
    named = rng.choice(topics[topic])
    text = _witness(
        rng, len(acrostic) if acrostic else rng.randint(2, 2 + level // 2), acrostic, letter, named
    )
    pool = [k for k in EASY if not (k == "lines" and acrostic)]
    kinds = rng.sample(pool, min(level - len(hard), len(pool))) + hard
    ws = words(text)
    content = sorted({w.lower() for w in ws} - FUNCTION_WORDS)
    slack = max(2, 3 * (11 - level))
    made: list[dict[str, Any]] = []
    for kind in kinds:
        if kind == "words":
            made += [_c("min_words", n=max(1, len(ws) - slack)), _c("max_words", n=len(ws) + slack)]
        elif kind == "include":
            made.append(_c("include", words=sorted(rng.sample(content, min(1 + level // 4, len(content))))))
        elif kind == "exclude":
            unused = sorted(set(BANK) - {w.lower() for w in ws} - set(TOPICS[topic]))
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
    return topic, made + _checks(topics[topic]), text


def generate(level: int, seed: int) -> Problem:
    rng = random.Random(f"mdr-{NAME}:{level}:{seed}")
    topic, constraints, witness = _draw(level, rng)
    return _problem(f"mdr-{NAME}-L{level}-s{seed}", level, topic, constraints, witness)


DOMAIN = Domain(NAME, items, generate)  # collected by base.MODULES, in report order
