"""Task sequences, their evaluation and accuracy-matrix summaries (certify.continual.tasks)."""

import dataclasses

import jax
import numpy as np
import pytest

from certify import continual
from certify.continual import ContinualError
from metaedit import datasets, nets

PAIRS = ((0, 1), (2, 3), (4, 5))


def _rows(x):
    """The multiset of flattened rows of x, order-free."""
    return sorted(row.tobytes() for row in np.asarray(x).reshape(len(x), -1))


# --------------------------------------------------------------------------- split


@pytest.mark.parametrize("scenario", continual.SCENARIOS)
def test_split_classes_labels_and_masks(digits, scenario):
    seq = continual.split(digits, scenario, PAIRS)
    assert seq.num_tasks == 3 and seq.classes == PAIRS and seq.scenario == scenario
    assert seq.num_outputs == (2 if scenario == "domain" else 10)
    assert seq.output_mask.shape == (3, seq.num_outputs)
    for t, classes in enumerate(PAIRS):
        for part in ("train", "test"):
            x, y = getattr(seq, f"x_{part}")[t], getattr(seq, f"y_{part}")[t]
            source_x, source_y = getattr(digits, f"x_{part}"), getattr(digits, f"y_{part}")
            assert y.dtype == np.int32 and x.shape == (len(y), 8, 8, 1)
            assert len(y) == np.isin(source_y, classes).sum()
            for position, c in enumerate(classes):
                label = position if scenario == "domain" else c
                assert _rows(x[y == label]) == _rows(source_x[source_y == c])
            assert set(np.unique(y)) == ({0, 1} if scenario == "domain" else set(classes))
        expected_mask = np.zeros(10, bool)
        expected_mask[list(classes)] = True
        if scenario == "task":
            np.testing.assert_array_equal(seq.output_mask[t], expected_mask)
        else:
            assert seq.output_mask[t].all()


def test_split_max_train_is_balanced_and_seeded(digits):
    seq = continual.split(digits, "domain", PAIRS, max_train=21, seed=3)
    for y in seq.y_train:
        assert sorted(np.bincount(y, minlength=2)) == [10, 11]
    assert [len(y) for y in seq.y_test] == [len(y) for y in continual.split(digits, "domain", PAIRS).y_test]
    again = continual.split(digits, "domain", PAIRS, max_train=21, seed=3)
    other = continual.split(digits, "domain", PAIRS, max_train=21, seed=4)
    np.testing.assert_array_equal(seq.x_train[0], again.x_train[0])
    assert not np.array_equal(seq.x_train[0], other.x_train[0])


@pytest.mark.parametrize("name", ["mnist5k", "mnist1d"])
def test_split_other_image_data_sets(name):
    dataset = datasets.load_dataset(name)
    seq = continual.split(dataset, "class")
    assert seq.num_tasks == 5 and seq.input_shape == dataset.input_shape
    assert sum(len(y) for y in seq.y_train) == len(dataset.y_train)
    assert sum(len(y) for y in seq.y_test) == len(dataset.y_test)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(scenario="online"), "unknown scenario 'online'"),
        (dict(pairs=((0, 0), (2, 3))), "task 0 has fewer than two distinct classes"),
        (dict(pairs=((0, 1), (5,))), "task 1 has fewer than two distinct classes"),
        (dict(pairs=((0, 1, 1), (2, 3, 4))), "task 0 repeats a class"),
        (dict(pairs=((0, 1), (2, 10))), "class 10 of task 1 is out of range"),
        (dict(pairs=((0, 1), (-1, 2))), "class -1 of task 1 is out of range"),
        (dict(pairs=()), "pairs is empty"),
        (dict(scenario="domain", pairs=((0, 1), (2, 3, 4))), "same number of classes"),
        (dict(max_train=1), "max_train must be an integer of at least"),
    ],
)
def test_split_rejects_bad_tasks(digits, kwargs, message):
    options = {"scenario": "class", "pairs": PAIRS, **kwargs}
    with pytest.raises(ContinualError, match=message):
        continual.split(digits, **options)


def test_split_rejects_a_class_absent_from_the_data(digits):
    keep = digits.y_train != 3
    without_three = dataclasses.replace(digits, x_train=digits.x_train[keep], y_train=digits.y_train[keep])
    with pytest.raises(ContinualError, match="class 3 of task 1 has no training samples"):
        continual.split(without_three, "task", PAIRS)


# --------------------------------------------------------------------------- evaluation and metrics


@pytest.mark.parametrize("scenario", ["task", "class"])
def test_evaluate_matches_a_direct_computation(digits, spec, scenario):
    seq = continual.split(digits, scenario, PAIRS)
    params = nets.init(spec, jax.random.key(7))
    got = continual.evaluate(spec, params, seq)
    for t, classes in enumerate(PAIRS):
        logits = np.asarray(nets.apply(spec, params, seq.x_test[t]))
        if scenario == "task":
            allowed = np.full(10, -np.inf)
            allowed[list(classes)] = 0.0
            logits = logits + allowed
        assert got[t] == pytest.approx(np.mean(logits.argmax(1) == seq.y_test[t]))
    if scenario == "task":  # a masked two-way choice is right far more often than a 10-way one
        assert got.mean() > continual.evaluate(spec, params, continual.split(digits, "class", PAIRS)).mean()


def test_evaluate_rejects_a_network_that_does_not_fit(digits, spec):
    seq = continual.split(digits, "domain", PAIRS)
    with pytest.raises(ContinualError, match="10 outputs; the domain-incremental sequence needs 2"):
        continual.evaluate(spec, nets.init(spec, jax.random.key(0)), seq)


def test_average_accuracy_and_forgetting():
    r = np.array([[0.9, 0.1, 0.0], [0.6, 0.8, 0.2], [0.7, 0.5, 0.9]])
    assert continual.average_accuracy(r) == pytest.approx((0.7 + 0.5 + 0.9) / 3)
    assert continual.forgetting(r) == pytest.approx(((0.9 - 0.7) + (0.8 - 0.5)) / 2)
    stacked = np.stack([r, np.eye(3)])
    np.testing.assert_allclose(continual.forgetting(stacked), [0.25, 1.0])  # eye: every old task drops 1 -> 0
    np.testing.assert_allclose(continual.average_accuracy(stacked), [0.7, 1 / 3])
    with pytest.raises(ContinualError, match="at least two tasks"):
        continual.forgetting(np.ones((1, 1)))
    with pytest.raises(ContinualError, match=r"\[..., T, T\]"):
        continual.average_accuracy(np.ones((2, 3)))


