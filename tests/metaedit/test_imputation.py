"""Imputation edits for data minimisation: the dropped groups' rows are exactly zero and at most k groups
are read; a dropped group that the kept ones determine costs nothing (the zeroing baseline loses it); the
imputation is the regression of the dropped columns on the kept ones; each network's greedy scores are its
own; nothing to drop changes nothing; what cannot be edited is refused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaedit import imputation, nets, requirements
from metaedit.datasets import Dataset
from metaedit.imputation import ImputationError
from metaedit.requirements import Minimisation, groups_read


def _data(n=1600, seed=0):
    """Groups: a (col 0), b (col 1), c (one-hot, cols 2-4), copy (col 5 = 2 a - b + 1, exactly), noise (col 6).
    Labels read a, b and c."""
    rng = np.random.default_rng(seed)
    a, b, noise = rng.normal(size=(3, n)).astype(np.float32)
    level = rng.integers(0, 3, n)
    x = np.stack([a, b, *np.eye(3, dtype=np.float32)[level].T, 2 * a - b + 1, noise], 1).astype(np.float32)
    y = (a - b + 0.7 * (level - 1) + 0.3 * rng.normal(size=n) > 0).astype(np.int32)
    half = n // 2
    groups = ((0,), (1,), (2, 3, 4), (5,), (6,))
    return Dataset("toy", x[:half], y[:half], x[half:], y[half:], 2, None, None, None, None,
                   tuple(f"c{i}" for i in range(7)), ("a", "b", "c", "copy", "noise"), groups)


def _trained(spec, dataset, count=4, steps=300, seed=1):
    """Networks trained on the data (every column read), stacked [count, ...]."""
    import optax

    x, y = jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)
    optimiser = optax.adam(0.03)

    def train(key):
        params = nets.init(spec, key)

        def step(state, _):
            params, opt = state
            grads = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(nets.apply(spec, p, x), y).mean())(params)
            updates, opt = optimiser.update(grads, opt)
            return (optax.apply_updates(params, updates), opt), None

        return jax.lax.scan(step, (params, optimiser.init(params)), None, length=steps)[0][0]

    return jax.vmap(train)(jax.random.split(jax.random.key(seed), count))


@pytest.fixture(scope="module")
def setup():
    dataset = _data()
    spec = nets.MLPSpec((7,), (8, 6), 2)
    requirement = requirements.for_dataset("minimisation", dataset)
    return dataset, spec, requirement, _trained(spec, dataset)


def _member(params, i):
    return jax.tree.map(lambda leaf: leaf[i], params)


@pytest.mark.parametrize("keep", [1, 3, 4])
def test_dropped_rows_are_zero_and_at_most_k_groups_are_read(setup, keep):
    dataset, spec, requirement, params = setup
    edited = imputation.edit(spec, requirement, params, dataset, float(keep))
    assert edited.kept.shape == (4, 5) and (edited.kept.sum(1) == keep).all()  # every trained network reads all 5
    first = nets.layers(spec)[0].name
    for i in range(4):
        network = _member(edited.params, i)
        assert groups_read(spec, network, requirement.groups) <= keep
        for g, columns in enumerate(requirement.groups):
            if not edited.kept[i, g]:
                assert (np.asarray(network[first]["kernel"])[list(columns)] == 0).all()
    assert edited.seconds_per_edit > 0


def test_a_group_the_kept_ones_determine_is_dropped_at_no_cost(setup):
    """Keeping 4 of 5 groups: one of a, b and their exact combination goes (any one is determined by
    the other two). The imputation rebuilds it (the outputs hardly change: only the ridges), where
    zeroing the same rows changes them. Keeping 3: the noise goes next."""
    dataset, spec, requirement, params = setup
    assert not imputation.edit(spec, requirement, params, dataset, 3.0).kept[:, 4].any()
    edited = imputation.edit(spec, requirement, params, dataset, 4.0)
    assert edited.kept[:, [2, 4]].all() and (edited.kept[:, [0, 1, 3]].sum(1) == 2).all(), edited.kept
    x = jnp.asarray(dataset.x_test)
    before = jax.vmap(lambda p: nets.apply(spec, p, x))(params)
    after = jax.vmap(lambda p: nets.apply(spec, p, x))(edited.params)
    agreement = (before.argmax(-1) == after.argmax(-1)).mean(1)
    first = nets.layers(spec)[0].name
    columns = jnp.asarray(np.asarray([float(edited.kept[i, g]) for i in range(4) for g, cols in
                                      enumerate(requirement.groups) for _ in cols]).reshape(4, 7))
    zeroed = dict(params, **{first: dict(params[first], kernel=params[first]["kernel"] * columns[:, :, None])})
    zeroed_agreement = (jax.vmap(lambda p: nets.apply(spec, p, x))(zeroed).argmax(-1) == before.argmax(-1)).mean(1)
    assert (agreement >= 0.99).all(), agreement
    assert agreement.mean() > zeroed_agreement.mean() + 0.05, (agreement, zeroed_agreement)


def test_the_imputation_is_the_regression_of_the_dropped_columns_on_the_kept_ones(setup):
    """``W + T W`` on the kept rows equals ``W_K + B W_R`` with ``B`` the least-squares regression of the
    dropped columns on the kept ones (numpy, float64); the dropped rows are exactly 0; ``Q = T^T Sigma T``."""
    dataset, spec, requirement, params = setup
    stats = imputation.statistics(dataset, requirement.groups)
    kept = jnp.asarray([[1, 1, 0, 0, 1], [0, 1, 1, 1, 0]], jnp.float32)
    change, spread = imputation.transforms(stats, kept)
    kernel = np.asarray(_member(params, 0)[nets.layers(spec)[0].name]["kernel"], np.float64)
    x = np.asarray(dataset.x_train, np.float64)
    centred = x - x.mean(0)
    for i, mask in enumerate(np.asarray(kept)):
        t = np.asarray(change[i], np.float64)
        dropped = [c for g in np.flatnonzero(mask == 0) for c in requirement.groups[g]]
        keep = [c for g in np.flatnonzero(mask) for c in requirement.groups[g]]
        regression = np.linalg.lstsq(centred[:, keep], centred[:, dropped], rcond=None)[0]  # [K, R]
        expected = kernel[keep] + regression @ kernel[dropped]
        np.testing.assert_allclose((kernel + t @ kernel)[keep], expected, rtol=0.05, atol=0.02)
        np.testing.assert_allclose(np.asarray(spread[i], np.float64), t.T @ (centred.T @ centred / len(x)) @ t,
                                   rtol=1e-3, atol=1e-4)
    edited = imputation.edit(spec, requirement, params, dataset, 2.0)
    first = nets.layers(spec)[0].name
    for i in range(4):
        rows = np.asarray(edited.params[first]["kernel"][i])
        dropped = [c for g in np.flatnonzero(~edited.kept[i]) for c in requirement.groups[g]]
        assert (rows[dropped] == 0).all()


def test_the_scores_match_a_brute_force_per_network(setup):
    """With networks on different kept sets, each candidate's score is ``tr(H dW^T Sigma dW)`` computed
    for that network alone."""
    dataset, spec, requirement, params = setup
    stats = imputation.statistics(dataset, requirement.groups)
    x = jnp.asarray(dataset.x_train[:256])
    curvature = imputation.curvatures(spec, params, x)
    masks = np.asarray([[1, 1, 1, 1, 1], [1, 0, 1, 1, 0], [0, 1, 1, 1, 1]], np.float32)
    owner = np.asarray([2, 0, 1, 2])
    scores = np.asarray(imputation._scores(stats, jnp.asarray(masks), jnp.asarray(owner), curvature))
    covariance = np.asarray(stats.covariance, np.float64)
    for p in range(4):
        hidden = np.asarray(curvature[p], np.float64)  # this network's W H W^T
        for g in range(5):
            candidate = masks[owner[p]].copy()
            candidate[g] = 0
            t = np.asarray(imputation.transforms(stats, jnp.asarray(candidate[None]))[0][0], np.float64)
            expected = np.sum((t.T @ covariance @ t) * hidden)
            np.testing.assert_allclose(scores[p, g], expected, rtol=1e-3, atol=1e-6)


def test_nothing_to_drop_leaves_the_network_and_ungrouped_columns_stay(setup):
    """Target >= the groups read (also a network with no hidden layer): unchanged. A column in no
    group is never dropped."""
    dataset, spec, requirement, params = setup
    same = imputation.edit(spec, requirement, params, dataset, 5.0)
    jax.tree.map(np.testing.assert_array_equal, same.params, params)
    flat = nets.MLPSpec((7,), (), 2)
    linear = _trained(flat, dataset, count=2, steps=100)
    first = nets.layers(flat)[0].name
    linear[first] = dict(linear[first], kernel=linear[first]["kernel"].at[:, 6].set(0.0))  # reads 4 groups
    unchanged = imputation.edit(flat, requirement, linear, dataset, 4.0)
    jax.tree.map(np.testing.assert_array_equal, unchanged.params, linear)
    assert not unchanged.kept[:, 4].any()  # the unread noise group is not reported as kept
    dropped = imputation.edit(flat, requirement, linear, dataset, 2.0)
    assert (dropped.kept.sum(1) == 2).all()
    partial = Minimisation(requirement.groups[:4])  # column 6 in no group
    edited = imputation.edit(spec, partial, params, dataset, 1.0)
    kernel = np.asarray(edited.params[nets.layers(spec)[0].name]["kernel"])
    assert (kernel[:, 6] != 0).any(axis=-1).all() and groups_read(spec, _member(edited.params, 0), partial.groups) == 1


def test_what_cannot_be_edited_is_refused(setup):
    dataset, spec, requirement, params = setup
    with pytest.raises(ImputationError, match="meets data minimisation"):
        imputation.edit(spec, requirements.PRUNING, params, dataset, 0.9)
    with pytest.raises(ImputationError, match="needs an MLP"):
        imputation.check(nets.parse_arch("cnn:4", (8, 8, 1), 2), Minimisation(((0,),)))
    with pytest.raises(ImputationError, match="at least 2 classes"):
        imputation.check(nets.MLPSpec((7,), (4,), 1), requirement)
    with pytest.raises(ImputationError, match="outside the network's 7 inputs"):
        imputation.check(spec, Minimisation(((0,), (7, 8))))
    with pytest.raises(ImputationError, match="rows must be"):
        imputation.edit(spec, requirement, params, dataset, 3.0, rows=1)
    with pytest.raises(requirements.RequirementError):
        imputation.edit(spec, requirement, params, dataset, 0.0)
