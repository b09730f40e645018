"""Calibration: the least invasive compliant edit, or a clear 'none complies'; constant predictors flagged."""

import jax
import jax.numpy as jnp
import numpy as np

from metaedit import baselines, calibrate, compare, gmn, nets, requirements
from metaedit.training import Batch

SPEC = nets.MLPSpec((6,), (5,), 2)


def editor_with(keep_bias):
    """An untrained editor whose masks at small lambda are all kept (keep_bias > 0) or all dropped
    (keep_bias < 0); larger lambdas move them by random amounts."""
    config = gmn.GMNConfig.for_specs([SPEC], hidden=8, layers=1, init_scale=1.0, keep_bias=keep_bias, head_init=1.0)
    return gmn.init_editor(config, jax.random.key(0))


def test_calibration_finds_the_smallest_compliant_lambda_and_says_when_none_complies():
    params = jax.vmap(lambda k: nets.init(SPEC, k))(jax.random.split(jax.random.key(1), 4))
    rows = Batch(jnp.zeros((8, 6)), jnp.zeros(8, jnp.int32), jnp.zeros(8, jnp.int32))
    pruning = requirements.get("pruning")
    lambdas = (0.1, 0.5, 1.0)
    found = calibrate.calibrate(editor_with(-0.5), SPEC, pruning, params, 0.9, rows, lambdas, reject_collapse=False)
    assert found.found.all() and (found.lam == 0.1).all()  # every mask dropped already at the first lambda
    for i in range(4):
        assert requirements.sparsity(SPEC, jax.tree.map(lambda l, i=i: l[i], found.params)) >= 0.9
    # rows all alike: an edit that moves their one prediction collapses, so collapse is not rejected here
    none = calibrate.calibrate(editor_with(4.0), SPEC, pruning, params, 0.9, rows, lambdas, reject_collapse=False)
    assert not none.found.any() and (none.value < 0.9).all()
    # an edit that turns every network into a constant predictor never counts as compliant
    x = jax.random.normal(jax.random.key(2), (64, 6))
    varied = Batch(x, jnp.zeros(64, jnp.int32), jnp.zeros(64, jnp.int32))
    collapsed = calibrate.calibrate(editor_with(-0.5), SPEC, pruning, params, 0.9, varied, lambdas)
    outputs = jax.vmap(lambda p: nets.apply(SPEC, p, x).argmax(-1))(params)
    varies = np.asarray([(o != o[0]).any() for o in outputs])
    assert not collapsed.found[varies].any() and varies.any()
    # the most compliant edit is kept where none complies: its sparsity is the best over the grid
    for i in range(4):
        edits = [gmn.edit(editor_with(4.0), SPEC, jax.tree.map(lambda l, i=i: l[i], params),
                          jnp.array([lam, (0.9 - 0.5) / (0.99 - 0.5)])) for lam in lambdas]
        assert none.value[i] == max(requirements.sparsity(SPEC, e) for e in edits)


def test_constant_predictors_are_flagged():
    class Data:
        y_test = np.array([0, 1, 1, 0])
        x_test = np.zeros((4, 6), np.float32)
        s_test = np.array([0, 1, 0, 1])

    result = baselines.BaselineResult(None, np.array([[1, 1, 1, 1], [0, 1, 1, 0]]), 0.1)
    row = compare.summarise(requirements.FAIRNESS, SPEC, result, Data(), 0.05, np.array([0.5, 0.5]))
    assert row["constant_fraction"] == 0.5 and row["value"] == 0.0  # the constant one has no gap at all


def test_demographic_parity_on_the_validation_rows_is_the_populations(adult):
    """The validation rows are stratified over (group, label) cells; their weights give each group the
    population's label mix, so demographic parity there is fairlearn's with those weights and close
    to its value on the whole training split (unweighted, the stratified rows' equal label mix biases it)."""
    from fairlearn.metrics import demographic_parity_difference

    spec = nets.MLPSpec(adult.input_shape, (8,), 2)
    params = nets.init(spec, jax.random.key(3), scale=1.5)
    rows = calibrate.validation_rows(adult, size=4096)
    requirement = requirements.DEMOGRAPHIC_PARITY
    weighted = float(requirement.exact(spec, params, rows))
    predictions = np.asarray(nets.apply(spec, params, rows.x).argmax(-1))
    oracle = demographic_parity_difference(np.asarray(rows.y), predictions, sensitive_features=np.asarray(rows.s),
                                           sample_weight=np.asarray(rows.weight, np.float64))
    assert abs(weighted - oracle) < 1e-5, (weighted, oracle)
    everything = np.asarray(nets.apply(spec, params, jnp.asarray(adult.x_train)).argmax(-1))
    population = demographic_parity_difference(adult.y_train, everything, sensitive_features=adult.s_train)
    unweighted = float(requirement.exact(spec, params, rows._replace(weight=None)))
    assert abs(weighted - population) < 0.02 and abs(weighted - population) < abs(unweighted - population), (
        weighted, unweighted, population)
    equalised = requirements.FAIRNESS  # conditioned on the label: the weights change nothing
    assert float(equalised.exact(spec, params, rows)) == float(equalised.exact(spec, params, rows._replace(weight=None)))
