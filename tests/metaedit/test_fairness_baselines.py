import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaedit import baselines, datasets, nets, requirements
from metaedit.requirements.fairness import NetworkClassifier, equalised_odds_gap

FAST = {"max_iter": 5, "steps": 200, "batch": 64, "learning_rate": 1e-2}  # German: 700 training rows


@pytest.fixture(scope="module")
def german():
    data = datasets.load_german()
    spec = nets.parse_arch("mlp:8", data.input_shape, 2)
    params = jax.vmap(lambda k: nets.init(spec, k))(jax.random.split(jax.random.key(0), 2))
    return spec, params, data


def member(tree, i: int):
    return jax.tree.map(lambda leaf: leaf[i], tree)


def accuracy(data, predictions) -> float:
    return float((np.asarray(predictions) == data.y_train[None]).mean())


def train_gap(data, predictions) -> float:
    return float(np.mean([equalised_odds_gap(jnp.asarray(data.y_train), jnp.asarray(p, jnp.float32),
                                             jnp.asarray(data.s_train)) for p in predictions]))


@pytest.mark.parametrize("requirement", ["fairness", "demographic_parity"])
def test_exponentiated_gradient_is_a_retraining_baseline_that_yields_hard_predictions(german, requirement):
    spec, params, data = german
    baseline = requirements.get(requirement).baselines()["exponentiated_gradient"]
    assert (baseline.family, baseline.strength) == ("retraining", "bound")
    result = baseline.run(spec, params, data, 0.05, target=0.05, **FAST)
    assert result.params is None and result.predictions.shape == (2, len(data.y_test))
    assert set(np.unique(result.predictions)) <= {0, 1} and result.seconds_per_edit > 0


def test_exponentiated_gradient_lowers_the_training_gap_of_the_same_networks_unconstrained(german):
    """On the training split (handed in as the test split), the randomised mixture's equalised-odds
    gap is near the gap aimed at (0.05 less the 0.02 margin) and well below that of the same fresh
    networks trained alone in the same way (means over the two networks when written: 0.020 and
    0.063; a mixture with a bound of 0.5 instead of 0.03 had 0.065)."""
    spec, params, data = german
    on_train = dataclasses.replace(data, x_test=data.x_train, y_test=data.y_train, s_test=data.s_train)
    run = requirements.get("fairness").baselines()["exponentiated_gradient"].run
    fair = run(spec, params, on_train, 0.05, target=0.05, **FAST).predictions
    starts = baselines.fresh(spec, params)
    plain = [NetworkClassifier(spec, member(starts, i), seed=i, steps=FAST["steps"],
                               batch=FAST["batch"], learning_rate=FAST["learning_rate"])
             .fit(data.x_train, data.y_train).predict(data.x_train) for i in range(2)]
    assert train_gap(data, fair) <= 0.06
    assert train_gap(data, fair) <= train_gap(data, plain) - 0.02
    assert accuracy(data, fair) >= accuracy(data, plain) - 0.05


def test_the_default_bound_turns_the_aimed_gap_into_fairlearns_deviation_from_the_overall_rate():
    from metaedit.requirements.fairness import _largest_share
    y = np.array([0] * 10 + [1] * 10)
    s = np.array([0] * 7 + [1] * 3 + [0] * 5 + [1] * 5)
    assert _largest_share(y, s, "equalized_odds") == pytest.approx(0.5)  # label 1: 5 and 5
    assert _largest_share(y, s, "demographic_parity") == pytest.approx(0.6)
    assert _largest_share(y, np.array([0, 1, 2, 2] * 5), "demographic_parity") == pytest.approx(0.5)
