import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

from metaedit import nets, requirements
from metaedit.requirements import Batch, RequirementError

SPEC = nets.MLPSpec((6,), (5,), 2)
GROUPS = ((0,), (1, 2, 3), (4, 5))


@pytest.mark.parametrize("groups", [2, 4])
def test_equalised_odds_and_parity_agree_with_fairlearn(groups):
    rng = np.random.default_rng(groups)
    for trial in range(20):
        n = 300
        y = rng.integers(0, 2, n)
        s = rng.integers(0, groups, n)
        pred = (rng.uniform(size=n) < 0.2 + 0.4 * s / (groups - 1) + 0.2 * y).astype(np.int64)
        score = jnp.asarray(pred, jnp.float32)
        ours = float(requirements.equalised_odds_gap(jnp.asarray(y), score, jnp.asarray(s), num_groups=groups))
        assert ours == pytest.approx(equalized_odds_difference(y, pred, sensitive_features=s), abs=1e-6)
        ours_dp = float(requirements.demographic_parity_gap(score, jnp.asarray(s), num_groups=groups))
        assert ours_dp == pytest.approx(demographic_parity_difference(y, pred, sensitive_features=s), abs=1e-6)


def test_hard_fairness_metric_on_a_network_matches_fairlearn():
    params = nets.init(SPEC, jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (300, 6))
    y = jax.random.randint(jax.random.key(2), (300,), 0, 2)
    s = (x[:, 0] > 0).astype(jnp.int32)
    pred = np.asarray(nets.apply(SPEC, params, x).argmax(-1))
    batch = Batch(x, y, s)
    assert requirements.FAIRNESS.measure(SPEC, params, batch) == pytest.approx(
        equalized_odds_difference(np.asarray(y), pred, sensitive_features=np.asarray(s)), abs=1e-6)
    soft = float(requirements.FAIRNESS.penalty(SPEC, params, batch))
    assert 0.0 <= soft <= 1.0
    grads = jax.grad(lambda p: requirements.FAIRNESS.penalty(SPEC, p, batch))(params)
    assert float(jnp.abs(grads["dense_0"]["kernel"]).sum()) > 0


def test_minimisation_counts_groups_read():
    params = nets.init(SPEC, jax.random.key(0))
    requirement = requirements.get("minimisation", GROUPS)
    assert requirement.measure(SPEC, params, None) == 3
    zeroed = {**params, "dense_0": {**params["dense_0"], "kernel": params["dense_0"]["kernel"].at[jnp.array([1, 2, 3])].set(0.0)}}
    assert requirement.measure(SPEC, zeroed, None) == 2
    assert requirement.complies(2, 2) and not requirement.complies(3, 2)
    partly = {**params, "dense_0": {**params["dense_0"], "kernel": params["dense_0"]["kernel"].at[jnp.array([1, 2])].set(0.0)}}
    assert requirement.measure(SPEC, partly, None) == 3  # one column of the group is still read
    assert float(requirement.penalty(SPEC, zeroed, None)) < float(requirement.penalty(SPEC, params, None))


def test_pruning_sparsity():
    params = nets.init(SPEC, jax.random.key(0))
    assert requirements.sparsity(SPEC, params) == 0.0
    total = 6 * 5 + 5 * 2
    pruned = {**params, "dense_0": {**params["dense_0"], "kernel": jnp.zeros((6, 5))}}
    assert requirements.PRUNING.measure(SPEC, pruned, None) == pytest.approx(30 / total)
    assert requirements.PRUNING.complies(0.75, 0.7) and not requirements.PRUNING.complies(0.6, 0.7)
    # the smooth density counts a zero weight as 0 and any other as at most 1
    assert 0 < float(requirements.soft_density(SPEC, pruned)) <= 10 / total + 1e-6


def test_jsd():
    a = jnp.array([[2.0, -1.0], [0.0, 0.0]])
    assert float(requirements.jsd(a, a)) == pytest.approx(0.0, abs=1e-7)
    far = float(requirements.jsd(jnp.array([[50.0, -50.0]]), jnp.array([[-50.0, 50.0]])))
    assert far == pytest.approx(np.log(2.0), rel=1e-5)  # disjoint distributions: log 2


def test_bad_requirements_are_named():
    with pytest.raises(RequirementError, match="unknown requirement 'fairnes'"):
        requirements.get("fairnes")
    with pytest.raises(RequirementError, match="needs the data set's feature groups"):
        requirements.get("minimisation")
    cnn = nets.CNNSpec((4, 4, 1), (2,), 2)
    with pytest.raises(RequirementError, match="needs an MLP"):
        requirements.groups_read(cnn, nets.init(cnn, jax.random.key(0)), GROUPS)
    three = nets.MLPSpec((6,), (5,), 3)
    with pytest.raises(RequirementError, match="needs a binary classifier"):
        requirements.FAIRNESS.measure(three, nets.init(three, jax.random.key(0)), Batch(jnp.zeros((4, 6)), jnp.zeros(4, jnp.int32), jnp.zeros(4, jnp.int32)))


def test_excess_is_the_exact_metric_with_a_smooth_gradient():
    """The editor's excess: value from the hard metric on the batch, a non-zero gradient."""
    params = nets.init(SPEC, jax.random.key(3))
    kernel = params["dense_0"]["kernel"].at[jnp.array([1, 2, 3])].set(0.0).at[0, :3].set(0.0)
    params = {**params, "dense_0": {**params["dense_0"], "kernel": kernel}}
    x = jax.random.normal(jax.random.key(4), (400, 6))
    batch = Batch(x, jax.random.randint(jax.random.key(5), (400,), 0, 2), (x[:, 1] > 0).astype(jnp.int32))
    minimisation = requirements.get("minimisation", GROUPS)
    cases = [
        (requirements.PRUNING, 0.5, 1 - requirements.sparsity(SPEC, params) - (1 - 0.5)),
        (minimisation, 1.0, requirements.groups_read(SPEC, params, GROUPS) / 3 - 1 / 3),
        (requirements.FAIRNESS, 0.01, requirements.FAIRNESS.exact(SPEC, params, batch) - 0.01),
    ]
    for requirement, target, expected in cases:
        assert expected > 0, requirement.name  # the case must exceed its target to test the value
        value, grads = jax.value_and_grad(lambda p: requirement.excess(SPEC, p, batch, target))(params)
        assert float(value) == pytest.approx(float(expected), abs=1e-6), requirement.name
        assert float(sum(jnp.abs(g).sum() for g in jax.tree.leaves(grads))) > 0, requirement.name
    met = requirements.PRUNING.excess(SPEC, params, batch, requirements.sparsity(SPEC, params))
    assert float(met) == 0.0


def test_an_absent_group_does_not_count():
    rng = np.random.default_rng(1)
    s = rng.integers(0, 3, 200)  # group 3 of 4 never appears
    y, pred = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    gap = float(requirements.equalised_odds_gap(jnp.asarray(y), jnp.asarray(pred, jnp.float32), jnp.asarray(s), 4))
    assert gap == pytest.approx(equalized_odds_difference(y, pred, sensitive_features=s), abs=1e-6)
    assert requirements.get("fairness", sensitive_groups=4).num_groups == 4  # a requirement set up for four groups
