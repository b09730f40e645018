import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaedit import editor, gmn, nets, requirements, zoo
from metaedit.editor import EditorTrainConfig, EditorTrainingError
from metaedit.requirements import Batch, RequirementError

TINY = EditorTrainConfig(requirement="pruning", steps=150, chunk_steps=50, networks_per_step=4, data_batch=64,
                         learning_rate=3e-3, hidden=16, layers=2)


@pytest.fixture(scope="module")
def pool(breast_cancer):
    config = zoo.ZooConfig(members=6, epochs=4, batch_size=32, chunk_steps=10, seed=1)
    spec = nets.MLPSpec(breast_cancer.input_shape, (8,), 2)
    trained = zoo.train_zoo(spec, breast_cancer, config, progress=False)
    return spec, trained.params


def fixed_batch(data, n=128):
    return Batch(jnp.asarray(data.x_test[:n]), jnp.asarray(data.y_test[:n]), jnp.zeros(n, jnp.int32))


def test_training_lowers_the_loss_and_lambda_zero_keeps_the_function(pool, breast_cancer, tmp_path):
    spec, params = pool
    requirement = requirements.get("pruning")
    batch = fixed_batch(breast_cancer)
    untrained = gmn.init_editor(gmn.GMNConfig.for_specs([spec], hidden=16, layers=2), jax.random.key(0))
    before = editor.evaluation_loss(untrained, spec, requirement, params, batch, 0.7, 0.8)
    trained = editor.train_editor(spec, params, breast_cancer, TINY, workdir=tmp_path / "run", progress=False)
    after = editor.evaluation_loss(trained, spec, requirement, params, batch, 0.7, 0.8)
    assert after["loss"] < 0.8 * before["loss"]
    keep = editor.evaluation_loss(trained, spec, requirement, params, batch, 0.0, 0.8)
    assert keep["jsd"] < 0.02  # lambda = 0 keeps the function
    assert after["excess"] < 0.5 * keep["excess"]  # and the editor does read lambda
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == TINY.num_chunks


def test_resumed_training_equals_uninterrupted(pool, breast_cancer, tmp_path):
    spec, params = pool
    config = EditorTrainConfig(**{**TINY.__dict__, "steps": 40, "chunk_steps": 20})
    whole = editor.train_editor(spec, params, breast_cancer, config, workdir=tmp_path / "whole", progress=False)
    assert editor.train_editor(spec, params, breast_cancer, config, workdir=tmp_path / "cut", progress=False,
                               stop_after_chunks=1) is None
    resumed = editor.train_editor(spec, params, breast_cancer, config, workdir=tmp_path / "cut", progress=False)
    for a, b in zip(jax.tree.leaves(whole.variables), jax.tree.leaves(resumed.variables)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bad_inputs(pool, breast_cancer):
    spec, params = pool
    with pytest.raises(requirements.RequirementError, match="unknown requirement 'prune'"):
        editor.train_editor(spec, params, breast_cancer, EditorTrainConfig(requirement="prune"), progress=False)
    with pytest.raises(RequirementError, match="needs a data set with a sensitive attribute"):
        editor.train_editor(spec, params, breast_cancer, EditorTrainConfig(requirement="fairness"), progress=False)
    with pytest.raises(EditorTrainingError, match="lambda_range"):
        EditorTrainConfig(requirement="pruning", lambda_range=(0.0, 1.5))
    with pytest.raises(EditorTrainingError, match=r"lambda must lie in \[0, 1\]"):
        editor.check_lambda(1.2)
    with pytest.raises(nets.SpecError, match="dense_0/kernel has shape"):
        editor.train_editor(nets.MLPSpec((30,), (9,), 2), params, breast_cancer, TINY, progress=False)
