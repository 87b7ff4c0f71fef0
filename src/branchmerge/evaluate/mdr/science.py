"""mdr domain `science`: science explanation with a given context: a passage, and a question whose answer is in
it or computed from figures in it. Graded programmatically on the answer's last line, `Answer: ...`.

Levels: 1-3 read a fact from the passage (more distractor facts with each level; a word, or a choice A-D);
4-6 apply one relation the passage states (6 also converts units); 7-10 chain two or three relations
(half-life, heating with an efficiency, a three-phase journey, Hardy-Weinberg counts), among distractor figures.
Generated items use invented minerals for the look-ups, so only the passage can answer them, and compute every
answer from the drawn figures. Answer forms and graders (`answer_spec`): a word, `exact` on the extracted last
line (any case); a choice, `choice`; a number, `regex` on the last line accepting equal decimal forms
("2.7", "2.70", "2,058" for 2058) and units after the number, but no other number on that line. A number whose
exact value has decimals is asked for to that many decimal places (`precision`), so the question states the
precision it is graded to.
"""

from __future__ import annotations

import random
from fractions import Fraction as F
from typing import Any

from branchmerge.evaluate.mdr.base import Domain
from branchmerge.records import Problem

NAME = "science"
ASK = {
    "word": "End your reply with a final line of the form 'Answer: <one word>'.",
    "choice": "End your reply with a final line of the form 'Answer: <letter>'.",
    "number": "End your reply with a final line of the form 'Answer: <number>' (the unit may follow the number).",
}
WORD_EXTRACT = r"(?i)\banswer\s*[:=]\s*[*_`]*\s*([^\n]*?)[\s.*_`]*$"


def number_text(x: F) -> str:
    """A terminating fraction as a plain decimal ("2.058", "-3", "156.75")."""
    sign, x = ("-" if x < 0 else ""), abs(x)
    whole, rest = divmod(x.numerator, x.denominator)
    digits = ""
    while rest and len(digits) < 12:
        rest *= 10
        d, rest = divmod(rest, x.denominator)
        digits += str(d)
    return f"{sign}{whole}" + (f".{digits}" if digits else "")


def number_regex(text: str) -> str:
    """A regex for the number `text` in any equal decimal form: optional thousands commas, trailing zeros."""
    neg, int_part, frac = text.startswith("-"), *text.lstrip("-").partition(".")[::2]
    head = len(int_part) % 3 or 3
    groups = [int_part[:head]] + [int_part[i : i + 3] for i in range(head, len(int_part), 3)]
    tail = rf"\.{frac}0*" if frac else r"(?:\.0*)?"
    return ("[-−]" if neg else "") + ",?".join(groups) + tail


def answer_spec(form: str, answer: str) -> dict[str, Any]:
    """The grader spec for an answer of this form ("word", "choice" or "number") on the reply's last line."""
    if form == "word":
        return {"type": "exact", "case_sensitive": False, "extract": WORD_EXTRACT}
    if form == "choice":
        return {"type": "choice", "choices": ["A", "B", "C", "D"]}
    pattern = rf"(?is).*\banswer\s*[:=]\s*[*_`$]*\s*{number_regex(answer)}[^\d\n]*"
    return {"type": "regex", "pattern": pattern}


def precision(form: str, answer: str) -> str:
    """The precision a number answer is graded to, said in the question: the exact value's decimals ("Give the
    number to 3 decimal places." for 2.058, so 2.06 fails by the question's own terms); nothing for whole numbers,
    which are exact (a rounding the question asks for is said in the question itself)."""
    decimals = len(answer.partition(".")[2]) if form == "number" else 0
    return f" Give the number to {decimals} decimal place{'s' if decimals > 1 else ''}." if decimals else ""


def problem(name: str, pid: str, level: int, context: str, question: str, form: str, answer: str) -> Problem:
    return Problem(
        id=pid,
        domain=name,
        question=f"{context}\n\nQuestion: {question}{precision(form, answer)}\n{ASK[form]}",
        reference=answer,
        grader=answer_spec(form, answer),
        level=level,
        source="mdr",
    )


# (context, question, form, answer), level 1..10: real science, every answer taken or computed from the passage
FIXED: list[tuple[str, str, str, str]] = [
    (
        "In photosynthesis, plants use light energy captured by chlorophyll to turn carbon dioxide and water into "
        "glucose. Oxygen is released into the air as a by-product, and the glucose is used for growth or stored "
        "as starch.",
        "According to the passage, which gas do plants release as a by-product of photosynthesis?",
        "word",
        "oxygen",
    ),
    (
        "Earth's atmosphere is divided into layers by how temperature changes with height. Weather happens in the "
        "lowest layer, the troposphere. Above it, the stratosphere holds the ozone layer, which absorbs most of "
        "the Sun's ultraviolet radiation. Meteors burn up in the mesosphere, and the thin thermosphere above it "
        "is where auroras glow.\n\nA) troposphere\nB) stratosphere\nC) mesosphere\nD) thermosphere",
        "In which layer is the ozone layer found?",
        "choice",
        "B",
    ),
    (
        "Two minerals are common in the hills near the old mine. Calcite is usually white, reacts with dilute "
        "acid, and has a hardness of 3. Fluorite forms cubic crystals, is often green or purple, and has a "
        "hardness of 4. When fluorite is gently heated in the dark it glows with a faint light, and some "
        "specimens change from green to violet after strong heating, while calcite keeps its colour.",
        "According to the passage, what colour do some fluorite specimens turn after strong heating?",
        "word",
        "violet",
    ),
    (
        "Density is mass divided by volume. A jeweller weighs a small metal block at 540 g and finds, by "
        "dropping it into water, that it displaces 200 cm³. For comparison, water has a density of 1 g/cm³.",
        "What is the density of the block in g/cm³?",
        "number",
        "2.7",
    ),
    (
        "An electric heater is plugged into a 230 V socket. The current through a resistor equals the voltage "
        "divided by the resistance, and the power it uses equals voltage times current. The heater's element has "
        "a resistance of 46 Ω; the 60 W lamp beside it runs from the same socket.",
        "How much power, in watts, does the heater use?",
        "number",
        "1150",
    ),
    (
        "Light travels so fast that a lightning flash is seen almost at once, but sound travels through air at "
        "about 343 metres per second at 20 °C. During a storm on a 20 °C evening, a hiker counts 6 seconds "
        "between seeing a flash and hearing its thunder.",
        "How far away was the lightning, in kilometres?",
        "number",
        "2.058",
    ),
    (
        "Enzymes speed up reactions, but each works best within a narrow range of conditions. A student "
        "measured the activity of an enzyme at 37 °C (in units per minute): 12 at pH 3, 41 at pH 5, 68 at pH "
        "7 and 30 at pH 9. At 50 °C the activity at pH 7 fell to 15, because heat begins to change the shape "
        "of the enzyme's active site.\n\nA) pH 3\nB) pH 5\nC) pH 7\nD) pH 9",
        "At 37 °C, at which pH did the enzyme show the highest activity?",
        "choice",
        "C",
    ),
    (
        "Heating water takes 4.18 joules per gram for every degree Celsius of warming. An electric kettle rated "
        "at 500 W delivers only 80% of its power to the water; the rest heats the kettle and the air. It holds "
        "250 g of water at 20 °C, and water boils at 100 °C at sea level.",
        "How many seconds does the kettle take to warm the water to 80 °C? Round to the nearest second.",
        "number",
        "157",
    ),
    (
        "A train leaves a station from rest and speeds up evenly at 0.5 m/s² for 40 seconds. It then runs at "
        "constant speed for 120 seconds, and finally brakes evenly at 1 m/s² until it stops at the next station. "
        "For even acceleration from rest, distance = ½·a·t², and a vehicle braking evenly from speed v at rate d "
        "stops in a distance v²/(2d).",
        "How far apart are the two stations, in kilometres?",
        "number",
        "3",
    ),
    (
        "In a population in Hardy-Weinberg equilibrium with two alleles, the frequencies p and q of the dominant "
        "and recessive alleles satisfy p + q = 1, and the genotype frequencies are p² (homozygous dominant), 2pq "
        "(heterozygous) and q² (homozygous recessive). Only homozygous recessive individuals show the recessive "
        "trait. In an island population of 500 plants in equilibrium, 80 show the recessive trait. A nearby "
        "mainland population has a dominant allele frequency of 0.7.",
        "How many plants in the island population are heterozygous?",
        "number",
        "240",
    ),
]


def items() -> list[Problem]:
    return [problem(NAME, f"mdr-{NAME}-L{level}", level, *item) for level, item in enumerate(FIXED, start=1)]


# --------------------------------------------------------------------------------------------- generation

COLOURS = ("green", "violet", "amber", "grey", "crimson", "yellow", "black", "white", "blue", "orange")
ROCKS = ("basalt", "granite", "limestone", "sandstone", "marble", "slate", "shale", "gneiss")
SHAPES = ("cubic", "needle-like", "hexagonal", "tabular", "prismatic", "octahedral")


def _mineral_name(rng: random.Random) -> str:
    return rng.choice(("ver", "cal", "nor", "tam", "bex", "lud", "sor", "kai")) + rng.choice(
        ("idite", "aspar", "vane", "ockite", "erine", "olite")
    )


def _lookup(level: int, rng: random.Random) -> tuple[str, str, str, str]:
    names: list[str] = []
    while len(names) < level:  # level 1: one mineral; 2: two; 3: three (distractors)
        if (n := _mineral_name(rng)) not in names:
            names.append(n)
    colours = rng.sample(COLOURS, 2 * level)  # usual and heated colours all differ
    rocks, shapes = rng.sample(ROCKS, level), rng.sample(SHAPES, level)
    facts = [
        {
            "colour": colours[i],
            "hot": colours[level + i],
            "rock": rocks[i],
            "shape": shapes[i],
            "hardness": rng.randint(2, 8),
            "temp": rng.randint(3, 9) * 100,
        }
        for i in range(level)
    ]
    context = " ".join(
        f"{n.capitalize()} forms {f['shape']} crystals, is usually {f['colour']}, and is found mostly in "
        f"{f['rock']}; its hardness is {f['hardness']}. Above {f['temp']} °C it turns {f['hot']}."
        for n, f in zip(names, facts, strict=True)
    )
    context = "A survey described newly found minerals. " + context
    which = rng.randrange(level)
    name, f = names[which], facts[which]
    asks = {
        "rock": (f"In which rock is {name} mostly found?", ROCKS),
        "hot": (f"What colour does {name} turn above {f['temp']} °C?", COLOURS),
        "colour": (f"What colour is {name} usually?", COLOURS),
    }
    field = rng.choice(sorted(asks))
    question, pool = asks[field]
    if level != 2:
        return (
            context,
            f"According to the passage, {question[0].lower()}{question[1:]}",
            "word",
            str(f[field]),
        )
    options = rng.sample([x for x in pool if x != f[field]], 3) + [str(f[field])]
    rng.shuffle(options)
    letter = "ABCD"[options.index(str(f[field]))]
    listed = "\n".join(f"{k}) {o}" for k, o in zip("ABCD", options, strict=True))
    return f"{context}\n\n{listed}", question, "choice", letter


def _relation(level: int, rng: random.Random) -> tuple[str, str, F]:
    """One stated relation (4), among distractor figures (5), with a unit conversion (6)."""
    kind = rng.choice(("density", "speed", "current", "pressure"))
    convert = level >= 6
    if kind == "density":
        d, v = F(rng.choice((8, 15, 27, 79, 113)), 10), rng.randint(2, 40) * 10
        mass = f"{number_text(d * v / 1000)} kg (1 kg = 1000 g)" if convert else f"{number_text(d * v)} g"
        text = f"Density is mass divided by volume. A block has a mass of {mass} and a volume of {v} cm³."
        question, value = "What is its density in g/cm³?", d
    elif kind == "speed":
        t, v = rng.randint(2, 12), rng.randint(3, 30)
        run = f"{number_text(F(v * t * 60, 1000))} km in {t} minutes" if convert else f"{v * t} m in {t} s"
        text = f"Average speed is distance divided by time. A cyclist covers {run}."
        question, value = "What is the average speed in m/s?", F(v)
    elif kind == "current":
        r, i = rng.randint(2, 50), rng.randint(2, 12)
        resistor = f"{number_text(F(r, 1000))} kΩ (1 kΩ = 1000 Ω)" if convert else f"{r} Ω"
        text = (
            "The current through a resistor is the voltage across it divided by its resistance. A resistor of "
            f"{resistor} has {r * i} V across it."
        )
        question, value = "What is the current in amperes?", F(i)
    else:
        area, p = rng.randint(2, 20), rng.randint(5, 60)
        where = f"{area * 100} cm² (1 m² = 10000 cm²)" if convert else f"{area} m²"
        text = (
            f"Pressure is force divided by the area it acts on. A force of {area * p} N presses on {where}."
        )
        question, value = "What is the pressure in pascals?", F(p * 100) if convert else F(p)
    if level >= 5:
        text += (
            f" The same lab recorded a room temperature of {rng.randint(15, 30)} °C and a reading of "
            f"{rng.randint(2, 90)} on an uncalibrated meter."
        )
    return text, question, value


def _chain(level: int, rng: random.Random) -> tuple[str, str, F]:
    """Two or three relations in a row (7-10), with distractor figures."""
    if level == 7:
        half, k, n0 = rng.randint(2, 30), rng.randint(2, 5), rng.randint(1, 20) * 32
        text = (
            f"A radioactive isotope has a half-life of {half} days: every {half} days half of what is left "
            f"decays. A lab receives {n0} mg of it; a second isotope in the same shipment has a half-life of "
            f"{half + rng.randint(3, 9)} days."
        )
        return text, f"How many mg of the first isotope remain after {half * k} days?", F(n0, 2**k)
    if level == 8:
        while True:  # keep the exact time away from a rounding tie
            m, dt = rng.randint(1, 20) * 50, rng.randint(2, 8) * 10
            watts, eff = rng.choice((400, 500, 800, 1000)), rng.choice((50, 75, 80, 90))
            t = F(418, 100) * m * dt / F(watts * eff, 100)
            if abs(abs(t - round(t)) - F(1, 2)) > F(1, 20):
                break
        text = (
            f"Heating water takes 4.18 joules per gram for every degree Celsius. A {watts} W heater delivers "
            f"{eff}% of its power to {m} g of water at {100 - dt - 5} °C; water boils at 100 °C."
        )
        question = f"How many seconds does it take to warm the water by {dt} °C? Round to the nearest second."
        return text, question, F(round(t))
    if level == 9:
        a, d = F(rng.choice((5, 10, 20)), 10), F(rng.choice((5, 10, 20)), 10)
        t1, t2 = rng.randint(2, 8) * 10, rng.randint(3, 30) * 10
        v = a * t1
        text = (
            f"A train starts from rest and speeds up evenly at {number_text(a)} m/s² for {t1} s, runs at constant "
            f"speed for {t2} s, then brakes evenly at {number_text(d)} m/s² until it stops. Even acceleration "
            "from rest covers ½·a·t² in time t; braking evenly from speed v at rate d takes a distance v²/(2d)."
        )
        return text, "How far does the train travel, in metres?", a * t1 * t1 / 2 + v * t2 + v * v / (2 * d)
    q, n = F(rng.randint(1, 9), 10), rng.randint(1, 20) * 100
    text = (
        "In Hardy-Weinberg equilibrium the allele frequencies satisfy p + q = 1 and the genotype frequencies are "
        "p², 2pq and q²; only homozygous recessive individuals show the recessive trait. In a population of "
        f"{n} in equilibrium, {number_text(q * q * n)} show the recessive trait; a neighbouring population has "
        f"p = {number_text(F(rng.randint(1, 9), 10))}."
    )
    return text, "How many individuals in the first population are heterozygous?", 2 * (1 - q) * q * n


def generate(level: int, seed: int) -> Problem:
    rng = random.Random(f"mdr-{NAME}:{level}:{seed}")
    pid = f"mdr-{NAME}-L{level}-s{seed}"
    if level <= 3:
        return problem(NAME, pid, level, *_lookup(level, rng))
    context, question, value = _relation(level, rng) if level <= 6 else _chain(level, rng)
    return problem(NAME, pid, level, context, question, "number", number_text(value))


DOMAIN = Domain(NAME, items, generate)  # collected by base.MODULES, in report order
