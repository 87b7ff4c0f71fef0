"""Statistics that tell signal from noise.

- `passk`: pass@1 and the unbiased pass@k (Chen et al. 2021, eq. 1), with percentile-bootstrap intervals over
  items (each item resampled with all of its samples) and the Wilson interval.
- `paired`: paired comparisons on shared items (paired bootstrap and exact sign-flip test), merge synergy, and
  the interval of a ratio of paired gains (the kept share of a gain).
- `lengths`: output/reasoning tokens and truncation per model × group.
- `groups`: grouping by domain, level, benchmark or difficulty (every table also has the group "all").
"""

from branchmerge.evaluate.stats.groups import (
    ALL,
    NONE,
    ItemKey,
    accuracy_table,
    group_of,
    group_order,
    item_means,
    item_outcomes,
    item_scores,
    split,
)
from branchmerge.evaluate.stats.lengths import Lengths, length_table
from branchmerge.evaluate.stats.paired import (
    Comparison,
    Synergy,
    compare,
    merge_synergy,
    paired_compare,
    paired_test,
    ratio_interval,
    sign_flip_p,
)
from branchmerge.evaluate.stats.passk import (
    Estimate,
    bootstrap_mean,
    items_for_width,
    pass1,
    pass1_ci,
    pass1_table,
    pass_at_k,
    pass_at_k_curve,
    pass_at_k_curves,
    wilson_interval,
)

__all__ = [
    "ALL",
    "NONE",
    "Comparison",
    "Estimate",
    "ItemKey",
    "Lengths",
    "Synergy",
    "accuracy_table",
    "bootstrap_mean",
    "compare",
    "group_of",
    "group_order",
    "item_means",
    "item_outcomes",
    "item_scores",
    "items_for_width",
    "length_table",
    "merge_synergy",
    "paired_compare",
    "paired_test",
    "pass1",
    "pass1_ci",
    "pass1_table",
    "pass_at_k",
    "pass_at_k_curve",
    "pass_at_k_curves",
    "ratio_interval",
    "sign_flip_p",
    "split",
    "wilson_interval",
]
