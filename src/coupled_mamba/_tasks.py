"""The prediction tasks and metric families: data declares them, models size their head for the
task, metrics score by the family.

A leaf module (no imports) so that ``data``, ``models``, ``metrics`` and ``train`` share one
definition without depending on each other.
"""

TASKS = ("regression", "classification", "multilabel")
MMSA_DATASETS = ("mosi", "mosei", "sims", "simsv2")
# A metric family is an MMSA dataset (its sentiment metrics) or a task (the generic ones).
METRIC_FAMILIES = (*MMSA_DATASETS, *TASKS)
