"""mdr domain `scenario`: complex scenario analysis, graded by an LLM judge against a written rubric per item
(grader `judge`; see judge/rubric.py for how the judge is configured, pinned and cached).

Each item is a situation an organisation faces and a request for an analysis and a recommendation. The rubric
lists what a passing answer must do; the `reference` holds notes on what a strong answer may contain, which the
judge reads as guidance, not as the one right plan. Levels add pressures that interact, figures the answer must
use, and demands on the plan (priorities, trade-offs, risks and triggers to change course). Generated items
compose a setting with 1-4 drawn pressures; their rubric and notes are built from the same parts.
"""

from __future__ import annotations

import random

from branchmerge.evaluate.mdr.base import Domain
from branchmerge.judge import judge_spec
from branchmerge.records import Problem

NAME = "scenario"
CLOSING = "Give your analysis and a concrete recommendation."


def rubric_text(points: list[str]) -> str:
    return "\n".join(f"{i}. {p}" for i, p in enumerate(points, start=1))


def _problem(pid: str, level: int, situation: str, points: list[str], notes: str) -> Problem:
    question = f"{situation}\n\n{CLOSING}"
    return Problem(
        id=pid,
        domain=NAME,
        question=question,
        reference=notes,
        grader=judge_spec(question, rubric_text(points), pid),
        level=level,
        source="mdr",
    )


NO_CONTRADICTION = "States nothing that contradicts the facts given in the scenario."

# (situation, rubric points, reference notes), level 1..10
FIXED: list[tuple[str, list[str], str]] = [
    (
        "A café's only espresso machine breaks at 7 a.m. on a busy Saturday; the repair technician can come on "
        "Sunday. Espresso drinks are about half of the café's sales. What should the manager do today?",
        [
            "Proposes at least one concrete way to keep serving customers today (e.g. filter or cold-brew coffee, "
            "a changed menu, borrowing a machine).",
            "Mentions telling customers (or staff) about the change.",
            "Recommends a clear course of action for the day.",
        ],
        "Switch to filter/pour-over and tea, put up a sign, offer a small discount or loyalty stamp, check "
        "whether a nearby business can lend a machine, confirm the Sunday repair.",
    ),
    (
        "A small online shop ships all orders with one courier, which will raise its prices by 20% next month. "
        "Shipping is 15% of the shop's total costs and its profit margin is 8%. What should the shop do?",
        [
            "Estimates the effect on total costs (about 3% of costs) and relates it to the 8% margin.",
            "Considers at least two responses (e.g. other couriers, passing costs on, a free-shipping threshold).",
            "Recommends one response and says why.",
            NO_CONTRADICTION,
        ],
        "20% of 15% is a 3-point rise in costs, which would eat over a third of the 8% margin. Get quotes from "
        "other couriers, negotiate volume rates, raise the free-shipping threshold or add a small fee.",
    ),
    (
        "A school district has six bus routes but, after two drivers quit, only five drivers from next week; "
        "hiring takes at least a month. Route 6 serves 40 pupils in a rural area; the other routes each serve "
        "about 60 pupils in town. What should the district do for the coming month?",
        [
            "Considers the pupils who would lose transport, including the rural pupils' lack of alternatives.",
            "Proposes at least two options (e.g. merged or staggered routes, double runs, parent car pools, "
            "temporary drivers).",
            "Recommends a plan for the month and explains the choice.",
            "Says how families will be informed.",
        ],
        "Cutting the rural route hurts pupils with no alternative; staggered start times with double runs on "
        "town routes, merging two town routes, car-pool support or an agency driver are options.",
    ),
    (
        "A 200-bed regional hospital's intensive care unit is at 95% occupancy as the flu season peaks, two of its "
        "twelve ICU nurses are on sick leave, and the nearest other ICU is 90 minutes away. Planned surgeries "
        "that need an ICU bed afterwards take about three beds a week. What should the hospital do in the next "
        "two weeks?",
        [
            "Addresses both the bed shortage and the nurse shortage.",
            "Uses the figures given (e.g. the lost share of nurses, the beds freed by postponing surgeries).",
            "Considers the patients whose planned surgery would be postponed.",
            "Gives a prioritised plan for the two weeks.",
            NO_CONTRADICTION,
        ],
        "Two of twelve nurses is a 17% cut in ICU staff. Postpone non-urgent surgeries needing ICU beds (frees "
        "about 3 beds a week), agree transfer arrangements with the other ICU, bring in agency or redeployed "
        "nurses, set escalation triggers, keep urgent surgery going.",
    ),
    (
        "Two days before a major product launch, a software company's engineers find a security flaw that could "
        "expose customers' stored payment details. Fixing it properly takes about a week. Marketing has paid for "
        "launch events and press coverage, and a competitor launches a similar product next month.",
        [
            "Weighs the risk to customers (and the company's legal and reputational exposure) against the cost "
            "of delay.",
            "Considers at least one option besides 'launch as planned' and 'delay everything' (e.g. launching "
            "without the affected feature, a limited beta).",
            "Recommends a course of action and justifies it.",
            "Addresses what to tell customers, press or partners.",
            NO_CONTRADICTION,
        ],
        "Launching with a known payment-data flaw risks breach, regulatory penalties and trust; options: delay "
        "a week, launch with payment storage disabled, or a limited launch. Be honest with partners; the "
        "competitor's timing makes a one-week delay affordable.",
    ),
    (
        "A city council proposes closing its main shopping street to cars to make a pedestrian zone. "
        "Shopkeepers fear that deliveries will be harder and that customers who drive will go elsewhere; "
        "residents want less noise; the fire service needs access; a similar zone in a nearby city raised "
        "footfall by 15% after two years but two shops there closed in the first year.",
        [
            "Identifies the main stakeholders and what each stands to gain or lose.",
            "Uses the nearby city's evidence, including its limits (a different city, short-term losses).",
            "Addresses deliveries and emergency access concretely.",
            "Recommends a decision or a staged approach and justifies it.",
            "Names at least one trade-off the recommendation accepts.",
        ],
        "Trial period or staged closure, delivery windows, emergency access lanes, parking nearby, measure "
        "footfall and sales; the 15% gain came after two years and with early closures.",
    ),
    (
        "A manufacturer buys a control chip used in 60% of its products from a single supplier, whose factory "
        "has just burned down: no deliveries for eight weeks. The manufacturer holds five weeks of chip stock. "
        "Another supplier sells a compatible chip at a 30% higher price but needs four weeks of testing before "
        "it can be used. The largest customer's order, 25% of annual revenue, is due in seven weeks.",
        [
            "Works out the gap with the figures (five weeks of stock against an eight-week outage, the "
            "four-week qualification, the seven-week deadline).",
            "Identifies how the timelines interact (e.g. qualification must start now to cover the gap).",
            "Considers how to allocate the limited chips (e.g. to the largest customer's order first).",
            "Gives a prioritised plan with concrete first steps.",
            "Names the main risk of the plan and what would be done if it happens.",
            NO_CONTRADICTION,
        ],
        "Stock runs out in week 5, supply returns in week 8: a three-week gap. Start qualifying the second "
        "supplier now (ready in week 4), ration stock towards the big order, talk to the customer early, "
        "accept the 30% premium as temporary; risk: qualification fails, so look for brokers and redesign "
        "options in parallel.",
    ),
    (
        "A charity runs clean-water projects in three regions. Its main donor has cut funding by 25% from next "
        "year; a currency devaluation has raised local costs by 15%; and a new donor offers to cover half of the "
        "gap if the charity adopts a detailed monitoring system that would take staff time from field work. "
        "The three regions differ: one project is nearly finished, one is half built, one has not started.",
        [
            "Estimates the combined effect of the cut and the cost rise on what the charity can do.",
            "Explains how the pressures interact (e.g. the new donor's offer helps the budget but costs capacity).",
            "Prioritises among the three projects with reasons.",
            "Decides whether to accept the new donor's offer and why.",
            "Names who loses out under the recommendation and how that is mitigated.",
            NO_CONTRADICTION,
        ],
        "Funding at 75% buying at 115% costs covers about 65% of planned work. Finish the nearly complete project "
        "first; pause the unstarted one; accept the donor's offer if monitoring can be scoped; tell the affected "
        "community honestly.",
    ),
    (
        "A coastal town gets 60% of its jobs from tourism. A new study projects that serious floods, now once "
        "in 50 years, will come once in 10 years by 2050. Home insurance premiums have doubled in two years. The "
        "council can fund a sea wall with a 30-year bond that would raise local taxes by 8%; a developer offers "
        "to build a resort that would pay for part of the wall if it can build on the dunes that now protect "
        "the town's north side.",
        [
            "Explains what the change in flood frequency means (a large rise in yearly risk).",
            "Identifies the interactions (e.g. the resort funds the wall but removes natural protection; taxes "
            "and premiums together push residents out).",
            "Considers long-term effects on the tourism economy and on residents.",
            "Recommends a course of action, including on the resort offer, and justifies it.",
            "Names the main risk of the recommendation and an early-warning sign or trigger to revisit it.",
            "Names at least one trade-off or group that bears the cost.",
        ],
        "Yearly flood chance goes from 2% to 10%. Building on the dunes may raise risk; options: wall plus "
        "dune protection, managed retreat for the most exposed areas, insurance pooling; revisit as flood data "
        "and premiums change.",
    ),
    (
        "A national electricity grid operator faces a heat wave forecast to raise peak demand by 18% for ten "
        "days. One of its four gas plants (each about 15% of peak supply) is offline for maintenance that could "
        "be finished in six days at extra cost; hydro reservoirs are at 40% of normal, limiting hydro output; "
        "imports can cover at most 5% of peak demand, and neighbouring countries face the same heat wave. Rolling "
        "blackouts would hit hospitals' backup systems and elderly people without cooling.",
        [
            "Estimates the supply gap with the figures (demand up 18%, a plant worth about 15% offline, imports "
            "at most 5% and uncertain).",
            "Explains how the pressures interact (e.g. the neighbours' heat wave makes imports unreliable; low "
            "reservoirs limit how long hydro can fill the gap).",
            "Gives a prioritised plan for the ten days (e.g. speeding up maintenance, demand response, conserving "
            "hydro for the peaks).",
            "Says how the vulnerable (hospitals, elderly people) are protected if shortages happen.",
            "Names the main risks and the triggers for escalating (e.g. to rolling blackouts).",
            "Addresses communication with the public and with large consumers.",
            NO_CONTRADICTION,
        ],
        "With demand at 118% and supply missing 15% plus reduced hydro, the gap can exceed 20% of normal peak; "
        "pay to finish maintenance early, contract industrial demand response, appeal to the public, schedule "
        "hydro for peak hours, plan rotating outages that avoid critical feeders, publish triggers.",
    ),
]


def items() -> list[Problem]:
    return [
        _problem(f"mdr-{NAME}-L{level}", level, situation, points, notes)
        for level, (situation, points, notes) in enumerate(FIXED, start=1)
    ]


# ------------------------------------------------------------------------------------------ generation

SETTINGS = (
    "a family-owned bakery with two shops", "a regional bus company", "a 150-bed hospital",
    "a software start-up with 40 staff", "a city library service", "a mid-sized furniture maker",
    "a food bank serving 3,000 families", "a university department", "a hotel with 80 rooms", "a dairy farm",
)  # fmt: skip


def _pressures(rng: random.Random) -> list[tuple[str, str, str]]:
    """(what happens, a short name, a note for the judge) for each kind of pressure, with drawn figures."""
    weeks, cut, rise = rng.randint(2, 10), rng.choice((10, 15, 20, 25, 30)), rng.choice((10, 20, 30, 40))
    leave, staff, months, days = rng.randint(2, 5), rng.randint(12, 40), rng.randint(2, 9), rng.randint(2, 7)
    return [
        (f"its main supplier cannot deliver for {weeks} weeks", "the supply outage",
         "check stock against the outage, find alternative suppliers, ration"),
        (f"its budget for next year is cut by {cut}%", "the budget cut",
         "separate essential from optional spending, protect core service"),
        (f"demand is forecast to rise by {rise}% over the next quarter", "the demand rise",
         "capacity limits, prioritising, temporary capacity"),
        (f"{leave} of its {staff} experienced staff leave within a month", "the staff loss",
         f"{leave}/{staff} of experienced capacity lost; cover, hiring lead time, knowledge transfer"),
        (f"a new regulation takes effect in {months} months and requires costly safety checks", "the regulation",
         "compliance deadline drives timing; cost must come from somewhere"),
        (f"a cyberattack has taken its ordering and booking system offline for {days} days", "the system outage",
         "manual fallback, customer communication, security before restoring"),
        (f"a competitor nearby has cut its prices by {cut}%", "the competitor's price cut",
         "compete on value rather than price alone; margins"),
    ]  # fmt: skip


def generate(level: int, seed: int) -> Problem:
    rng = random.Random(f"mdr-{NAME}:{level}:{seed}")
    setting = rng.choice(SETTINGS)
    chosen = rng.sample(_pressures(rng), 1 + (level - 1) // 3)  # 1 pressure at levels 1-3 ... 4 at level 10
    horizon = rng.choice(("month", "three months", "six months"))
    facts = "; ".join(what for what, _, _ in chosen)
    situation = (
        f"You advise {setting}. This is its situation: {facts}. What should it do over the next {horizon}?"
    )
    names = [name for _, name, _ in chosen]
    points = [f"Addresses each pressure explicitly: {', '.join(names)}."]
    if level >= 4:
        points.append("Uses the figures given in at least one estimate of the impact.")
    if len(chosen) >= 2:
        points.append(
            f"Identifies how at least two of the pressures interact (e.g. {names[0]} and {names[1]})."
        )
    points.append(
        f"Gives a prioritised, concrete recommendation for the next {horizon}, not only a list of options."
    )
    if level >= 6:
        points.append("Names at least one trade-off, or a group that loses out under the recommendation.")
    if level >= 8:
        points.append(
            "Names the main risk of the plan and an early-warning sign or trigger to change course."
        )
    points.append(NO_CONTRADICTION)
    notes = "; ".join(f"{name}: {note}" for _, name, note in chosen)
    return _problem(f"mdr-{NAME}-L{level}-s{seed}", level, situation, points, notes)


DOMAIN = Domain(NAME, items, generate)  # collected by base.MODULES, in report order
