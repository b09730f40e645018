"""Requirements a network must meet, as a registry of :class:`Requirement` implementations.

Registered: ``minimisation`` (raw feature groups the network still reads), ``fairness``
(equalised-odds gap; ``demographic_parity`` beside it) and ``pruning`` (sparsity of the weights).
A new requirement is one module implementing :class:`Requirement` and one line in
:data:`REQUIREMENTS`. All measures take one network; vmap them over a population.
"""

from __future__ import annotations

from typing import Callable, Sequence

from metaedit.datasets import Dataset
from metaedit.requirements.base import Requirement, RequirementError, accuracy, jsd, straight_through
from metaedit.requirements.fairness import (DemographicParity, EqualisedOdds, Gap, demographic_parity_gap,
                                            equalised_odds_gap, equalised_odds_gaps)
from metaedit.requirements.minimisation import Minimisation, groups_read, soft_groups_read
from metaedit.requirements.pruning import Pruning, soft_density, sparsity
from metaedit.training import Batch

REQUIREMENTS: dict[str, Callable[[Sequence[Sequence[int]], int], Requirement]] = {
    "minimisation": lambda groups, sensitive: Minimisation(tuple(tuple(int(i) for i in g) for g in groups)),
    "fairness": lambda groups, sensitive: EqualisedOdds(sensitive),
    "demographic_parity": lambda groups, sensitive: DemographicParity(sensitive),
    "pruning": lambda groups, sensitive: Pruning(),
}
"""name -> factory(feature groups, groups of the sensitive attribute)."""
NAMES = tuple(REQUIREMENTS)

FAIRNESS = EqualisedOdds()
DEMOGRAPHIC_PARITY = DemographicParity()
PRUNING = Pruning()


def get(name: str, feature_groups: Sequence[Sequence[int]] = (), sensitive_groups: int = 2) -> Requirement:
    """The requirement registered as ``name`` (minimisation needs the data set's feature groups; the
    gaps, the number of groups of the sensitive attribute)."""
    if name not in REQUIREMENTS:
        raise RequirementError(f"unknown requirement {name!r}; known: {', '.join(NAMES)}")
    return REQUIREMENTS[name](feature_groups, sensitive_groups)


def for_dataset(name: str, dataset: Dataset) -> Requirement:
    """The requirement ``name`` for networks trained on ``dataset`` (its feature groups and the
    groups of its sensitive attribute bound)."""
    return get(name, dataset.feature_groups, max(2, dataset.num_groups))


__all__ = ["Requirement", "RequirementError", "REQUIREMENTS", "NAMES", "FAIRNESS", "DEMOGRAPHIC_PARITY", "PRUNING",
           "get", "for_dataset", "Batch", "Gap", "EqualisedOdds", "DemographicParity", "Minimisation", "Pruning",
           "accuracy", "jsd", "straight_through", "equalised_odds_gap", "equalised_odds_gaps", "demographic_parity_gap",
           "groups_read", "soft_groups_read", "soft_density", "sparsity"]
