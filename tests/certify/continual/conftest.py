"""Fixtures shared by the continual-learning tests: a class-incremental Split digits and an MLP for it."""

import pytest

from certify import continual
from metaedit import nets

PAIRS = ((0, 1), (2, 3), (4, 5))


@pytest.fixture(scope="module")
def class_il(digits):
    return continual.split(digits, "class", PAIRS)


@pytest.fixture(scope="module")
def spec(class_il):
    return nets.MLPSpec(class_il.input_shape, (16,), class_il.num_outputs)
