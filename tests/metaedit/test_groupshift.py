"""Group-shift edits: the route adds exactly the chosen per-group shift; the calibration meets the gap on
its rows when it says so (equal to fairlearn's, multi-valued groups included), says so when it cannot,
never collapses a class, and refuses what it cannot edit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

from metaedit import groupshift, nets, requirements
from metaedit.datasets import Dataset
from metaedit.groupshift import GroupShiftError
from metaedit.training import Batch

GROUPS = 3


def _data(n=1200, seed=0, groups=GROUPS):
    """Two numeric columns, a one-hot column group that is the sensitive attribute (columns 2..), one
    more numeric column; labels depend on the group, so networks that read it have a gap."""
    rng = np.random.default_rng(seed)
    s = rng.integers(0, groups, n)
    numeric = rng.normal(size=(n, 3)).astype(np.float32)
    x = np.concatenate([numeric[:, :2], np.eye(groups, dtype=np.float32)[s], numeric[:, 2:]], 1)
    y = (numeric[:, 0] + 0.8 * s - 0.8 + 0.5 * rng.normal(size=n) > 0).astype(np.int32)
    half = n // 2
    return Dataset("toy", x[:half], y[:half], x[half:], y[half:], 2, s[:half], s[half:], "g",
                   tuple(f"g{i}" for i in range(groups)), tuple(f"c{i}" for i in range(x.shape[1])),
                   ("a", "b", "g", "c"), ((0,), (1,), tuple(range(2, 2 + groups)), (2 + groups,)))


def _networks(spec, count=6, seed=1):
    return jax.vmap(lambda k: nets.init(spec, k, scale=2.0))(jax.random.split(jax.random.key(seed), count))


def _rows(dataset):
    return Batch(*(jnp.asarray(a) for a in (dataset.x_train, dataset.y_train, dataset.s_train)))


@pytest.mark.parametrize("hidden", [(), (5,), (4, 3, 3)])
def test_the_route_adds_each_groups_shift_to_the_class_1_logit_exactly(hidden):
    dataset = _data()
    spec = nets.MLPSpec((dataset.x_train.shape[1],), hidden, 2)
    params = nets.init(spec, jax.random.key(3))
    x = jnp.asarray(dataset.x_test)
    columns = jnp.asarray(groupshift.group_columns(dataset))
    neurons = [jnp.asarray(1 % width) for width in hidden]
    shifts = jnp.asarray([0.7, -1.3, 0.2])
    low = shifts.min()
    weights = jnp.where(columns >= 0, shifts[jnp.maximum(columns, 0)] - low, 0.0)
    bare = groupshift.with_route(spec, params, neurons, jnp.zeros_like(weights), jnp.zeros(()))
    edited = groupshift.with_route(spec, params, neurons, weights, low)
    before, after = nets.apply(spec, bare, x), nets.apply(spec, edited, x)
    np.testing.assert_allclose(after[:, 0], before[:, 0], atol=1e-5)
    np.testing.assert_allclose(after[:, 1] - before[:, 1], shifts[jnp.asarray(dataset.s_test)], atol=1e-5)
    if not hidden:  # no neuron is given up: the bare network is the network
        np.testing.assert_allclose(before, nets.apply(spec, params, x), atol=1e-6)


def test_group_columns_are_found_or_refused():
    dataset = _data()
    assert groupshift.group_columns(dataset).tolist() == [-1, -1, 0, 1, 2, -1]
    # an attribute the network does not read as one-hot columns (here: derived from a numeric column)
    hidden = Dataset("toy", dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test, 2,
                     (dataset.x_train[:, 0] > 0).astype(np.int32), (dataset.x_test[:, 0] > 0).astype(np.int32), "a",
                     ("low", "high"), dataset.feature_names, dataset.group_names, dataset.feature_groups)
    with pytest.raises(GroupShiftError, match="is not an input of the network"):
        groupshift.group_columns(hidden)
    spec = nets.MLPSpec((6,), (4,), 2)
    with pytest.raises(GroupShiftError, match="meets a fairness gap"):
        groupshift.edit(spec, requirements.PRUNING, _networks(spec), dataset, 0.9, _rows(dataset))
    with pytest.raises(GroupShiftError, match="binary MLP"):
        groupshift.check(nets.MLPSpec((6,), (4,), 3), requirements.get("fairness", (), GROUPS))


@pytest.mark.parametrize("name, metric, groups", [("fairness", equalized_odds_difference, 2),
                                                  ("fairness", equalized_odds_difference, 3),
                                                  ("demographic_parity", demographic_parity_difference, 3)])
def test_calibration_meets_the_gap_when_it_says_so_and_says_when_it_cannot(name, metric, groups):
    dataset = _data(groups=groups)
    spec = nets.MLPSpec((dataset.x_train.shape[1],), (6,), 2)
    params = _networks(spec)
    rows = _rows(dataset)
    requirement = requirements.get(name, (), groups)
    target, margin = 0.15, 0.02
    result = groupshift.edit(spec, requirement, params, dataset, target, rows, margin=margin)
    assert result.shifts.shape == (6, groups) and result.found.mean() >= 0.5
    x = jnp.asarray(dataset.x_train)
    for i in range(6):
        edited = jax.tree.map(lambda leaf, i=i: leaf[i], result.params)
        original = jax.tree.map(lambda leaf, i=i: leaf[i], params)
        predicted = np.asarray(nets.apply(spec, edited, x).argmax(-1))
        # on unstratified rows the value is the gap fairlearn computes, multi-valued attribute included
        gap = metric(dataset.y_train, predicted, sensitive_features=dataset.s_train)
        assert gap == pytest.approx(float(result.value[i]), abs=2e-3)
        if result.found[i]:
            assert gap <= target - margin + 2e-3
        elif groups == 2:  # with two groups the bound is the pair's: found says exactly whether it is met
            assert gap > target - margin - 2e-3
        # found or not, no group loses more than half of its predicted share of either class
        kept = np.asarray(nets.apply(spec, original, x).argmax(-1))
        for g in range(groups):
            share, share_before = predicted[dataset.s_train == g].mean(), kept[dataset.s_train == g].mean()
            assert share >= share_before / 2 - 1e-9 and 1 - share >= (1 - share_before) / 2 - 1e-9
    # a gap of zero cannot be had without collapsing a class: it says so, and keeps no worse shifts
    none = groupshift.edit(spec, requirement, params, dataset, 0.0, rows, margin=0.0)
    assert not none.found.any()
    before = jax.vmap(lambda p: requirement.exact(spec, p, rows))(params)
    assert (none.value <= np.asarray(before) + 1e-6).all()
