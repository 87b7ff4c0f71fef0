"""`mdr`: the built-in multi-domain reasoning benchmark: ten domains, ten levels each, written by us.

Every domain is one module here with the same contract (`base.Domain`): `items()` gives its ten fixed items, one
per level 1-10, and `generate(level, seed)` makes a fresh item at any level, so a model can be tested on items it
cannot have seen. Items are plain `Problem` records whose `grader` spec names a registered grader, so `eval`,
`verify` and the GRPO accuracy reward grade them with the same code. Only the scenario and ethics domains use an
LLM judge; every other domain is graded programmatically.
"""

from __future__ import annotations

from branchmerge.evaluate.mdr.base import Domain, domain_names, load_mdr, register

__all__ = ["Domain", "domain_names", "load_mdr", "register"]
