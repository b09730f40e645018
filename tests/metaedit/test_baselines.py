import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fairlearn.metrics import equalized_odds_difference

from metaedit import datasets, nets, requirements, zoo
from metaedit.requirements.minimisation import permutation_masks


def baseline(requirement, name):
    return requirements.get(requirement).baselines()[name].run


@pytest.fixture(scope="module")
def german_zoo():
    data = datasets.load_german()
    spec = nets.MLPSpec(data.input_shape, (16,), 2)
    trained = zoo.train_zoo(spec, data, zoo.ZooConfig(members=3, epochs=20, batch_size=32, chunk_steps=50, seed=0),
                            progress=False)
    return spec, jax.tree.map(jnp.asarray, trained.params), data


def test_magnitude_pruning_reaches_its_sparsity_and_finetuning_keeps_the_mask(german_zoo):
    spec, params, data = german_zoo
    pruned = baseline("pruning", "magnitude")(spec, params, data, 0.8)
    tuned = baseline("pruning", "magnitude+finetune")(spec, params, data, 0.8)
    refit = baseline("pruning", "magnitude+refit")(spec, params, data, 0.8)
    for i in range(3):
        member = jax.tree.map(lambda leaf: leaf[i], pruned.params)
        assert requirements.sparsity(spec, member) == pytest.approx(0.8, abs=0.01)
        for result in (tuned, refit):
            kept = jax.tree.map(lambda leaf: leaf[i], result.params)
            assert requirements.sparsity(spec, kept) >= requirements.sparsity(spec, member) - 1e-9
    accuracy = lambda r: (r.predictions == data.y_test[None]).mean()  # noqa: E731
    assert accuracy(tuned) >= accuracy(pruned) - 0.02
    agree = lambda r: (r.predictions == baseline("pruning", "magnitude")(spec, params, data, 0.0).predictions).mean()  # noqa: E731
    assert agree(refit) > agree(pruned)  # the refit brings the pruned networks back towards the originals
    assert pruned.seconds_per_edit > 0 and pruned.predictions.shape == (3, len(data.y_test))


def test_group_removal_keeps_k_groups(german_zoo):
    spec, params, data = german_zoo
    for name in ("group_norm", "group_norm+finetune", "permutation", "permutation+finetune", "retrain"):
        result = requirements.get("minimisation", data.feature_groups).baselines()[name].run(spec, params, data, 5)
        for i in range(3):
            member = jax.tree.map(lambda leaf: leaf[i], result.params)
            assert requirements.groups_read(spec, member, data.feature_groups) <= 5


def test_fairness_baselines_lower_the_gap(german_zoo):
    spec, params, data = german_zoo
    raw = np.asarray(jax.vmap(lambda p: nets.apply(spec, p, jnp.asarray(data.x_test)).argmax(-1))(params))
    gap = lambda preds: np.mean([equalized_odds_difference(data.y_test, p, sensitive_features=data.s_test) for p in preds])  # noqa: E731
    post = baseline("fairness", "threshold_optimizer")(spec, params, data, None)
    assert post.params is None and post.predictions.shape == raw.shape
    penalised = baseline("fairness", "penalty_finetune")(spec, params, data, 5.0)
    assert min(gap(post.predictions), gap(penalised.predictions)) < gap(raw)
    retrained = baseline("fairness", "penalty_retrain")(spec, params, data, 5.0, steps=300)
    assert retrained.predictions.shape == raw.shape and (retrained.predictions == data.y_test[None]).mean() > 0.6


def test_permutation_importance_keeps_the_group_the_network_uses(german_zoo):
    """A network reading only group 0 keeps group 0 when asked to keep one group."""
    spec, params, data = german_zoo
    first = nets.layers(spec)[0].name
    only = np.zeros(data.input_shape[0], np.float32)
    only[list(data.feature_groups[1])] = 1.0
    kernel = params[first]["kernel"] * jnp.asarray(only)[None, :, None]
    masked = {**params, first: {**params[first], "kernel": kernel}}
    masks = permutation_masks(spec, masked, data, keep=1)
    kept = np.asarray(masks[first]["kernel"][:, :, 0])
    np.testing.assert_array_equal(kept, np.broadcast_to(only, kept.shape))
