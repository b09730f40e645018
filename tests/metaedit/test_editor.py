import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaedit import baselines, checkpoint, editor, gmn, nets, requirements, zoo
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


@pytest.mark.parametrize("messages", gmn.MESSAGES)
def test_training_lowers_the_loss_and_lambda_zero_keeps_the_function(pool, breast_cancer, tmp_path, messages):
    spec, params = pool
    requirement = requirements.get("pruning")
    batch = fixed_batch(breast_cancer)
    untrained = gmn.init_editor(gmn.GMNConfig.for_specs([spec], hidden=16, layers=2, messages=messages),
                                jax.random.key(0))
    before = editor.evaluation_loss(untrained, spec, requirement, params, batch, 0.7, 0.8)
    config = dataclasses.replace(TINY, messages=messages)
    trained = editor.train_editor(spec, params, breast_cancer, config, workdir=tmp_path / "run", progress=False)
    assert editor.load_editor(tmp_path / "run")[0].config.messages == messages
    after = editor.evaluation_loss(trained, spec, requirement, params, batch, 0.7, 0.8)
    assert after["loss"] < 0.8 * before["loss"]
    keep = editor.evaluation_loss(trained, spec, requirement, params, batch, 0.0, 0.8)
    assert keep["jsd"] < 0.02  # lambda = 0 keeps the function
    assert after["excess"] < 0.5 * keep["excess"]  # and the editor does read lambda
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == TINY.num_chunks


def test_resumed_training_equals_uninterrupted_and_keeps_the_best_validated_editor(pool, breast_cancer, tmp_path):
    spec, params = pool
    config = EditorTrainConfig(**{**TINY.__dict__, "steps": 100, "chunk_steps": 10, "seed": 0,
                                                  "keep": "best"})  # best: chunk 8
    held_out = jax.tree.map(lambda a: a[:2], params)
    run = lambda where, **kw: editor.train_editor(spec, params, breast_cancer, config, workdir=tmp_path / where,
                                                  progress=False, validation=held_out, **kw)
    whole = run("whole")
    assert run("cut", stop_after_chunks=3) is None
    resumed = run("cut")
    for a, b in zip(jax.tree.leaves(whole.variables), jax.tree.leaves(resumed.variables)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the editor kept (and loaded) is the chunk with the lowest validation loss
    logged = [json.loads(line)["val_loss"] for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    loaded, _ = editor.load_editor(tmp_path / "whole")
    rows = jax.tree.map(lambda a: a[: config.data_batch], baselines.split_batch(breast_cancer, "train"))
    kept = editor.evaluation_loss(loaded, spec, requirements.get("pruning"), held_out, rows, 0.5, 0.9)
    assert kept["loss"] == pytest.approx(min(logged), rel=1e-4)


def _as_older_format(monkeypatch, edge_dim, format=editor.READABLE_OLDER):
    """Editor records read as if written in ``format`` with this edge width, before the weight
    messages existed (no ``messages`` setting)."""
    real = checkpoint.read_record

    def read(directory, step=None):
        found, record = real(directory, step)
        gmn_record = {k: v for k, v in record["gmn"].items() if k != "messages"}
        config = {k: v for k, v in record["config"].items() if k != "messages"}
        return found, {**record, "format": format, "gmn": {**gmn_record, "edge_dim": edge_dim}, "config": config}
    monkeypatch.setattr(checkpoint, "read_record", read)


def test_an_older_editor_is_read_only_where_its_edits_are_unchanged(pool, breast_cancer, tmp_path, monkeypatch):
    spec, params = pool
    config = EditorTrainConfig(**{**TINY.__dict__, "steps": 10, "chunk_steps": 10, "messages": "edges"})
    editor.train_editor(spec, params, breast_cancer, config, workdir=tmp_path / "run", progress=False)
    current, _ = editor.load_editor(tmp_path / "run")
    for format in (editor.READABLE_OLDER, editor.EDITOR_FORMAT):  # /4 records were written without messages too
        with monkeypatch.context() as patched:
            _as_older_format(patched, edge_dim=1, format=format)  # one weight per edge (MLPs): the same edits
            older, record = editor.load_editor(tmp_path / "run")
        assert older.config.messages == "edges" and older.config == current.config
        for a, b in zip(jax.tree.leaves(current.variables), jax.tree.leaves(older.variables)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with monkeypatch.context() as patched:
        _as_older_format(patched, edge_dim=9)  # conv taps: one keep-logit per edge then, per tap now
        with pytest.raises(checkpoint.CheckpointError, match="earlier version.*train it again"):
            editor.load_editor(tmp_path / "run")


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
    with pytest.raises(EditorTrainingError, match="2 architectures but 1 populations"):
        editor.train_editor([spec, nets.MLPSpec((30,), (4,), 2)], [params], breast_cancer, TINY, progress=False)
    with pytest.raises(EditorTrainingError, match="must read the same inputs"):
        editor.train_editor([spec, nets.MLPSpec((20,), (4,), 2)], [params, params], breast_cancer, TINY,
                            progress=False)
    with pytest.raises(EditorTrainingError, match="rescale must be >= 1"):
        EditorTrainConfig(rescale=0.5)
    with pytest.raises(EditorTrainingError, match="--budget is for pruning"):
        editor.train_editor(spec, params, breast_cancer, EditorTrainConfig(requirement="minimisation", budget=True),
                            progress=False)


def test_monotone_penalty_compares_the_edit_with_a_larger_lambda(pool, breast_cancer):
    spec, params = pool
    config = gmn.GMNConfig.for_specs([spec], hidden=16, layers=2, init_scale=0.5, head_init=1.0)
    variables = gmn.init_editor(config, jax.random.key(3)).variables
    batch, requirement = fixed_batch(breast_cancer), requirements.get("pruning")
    lam, target = jnp.full((6,), 0.3), jnp.full((6,), 0.9)
    loss = lambda further: editor.editing_loss(variables, None, config, spec, requirement, params, batch, lam, target,
                                               monotone=1.0, further=further)
    same, _ = loss(jnp.zeros(6))
    _, metrics = loss(jnp.full((6,), 0.5))
    assert float(editor.editing_loss(variables, None, config, spec, requirement, params, batch, lam, target)[0]) == \
        pytest.approx(float(same), rel=1e-6)  # the same lambda: nothing added
    trained = gmn.Editor(config, variables, None)
    value = lambda p, lam_: requirement.penalty(spec, gmn.edit_one(
        trained, spec, p, editor.condition(requirement, jnp.float32(lam_), jnp.float32(0.9)), hard=False), batch)
    expected = np.mean([max(float(value(jax.tree.map(lambda a, i=i: a[i], params), 0.8))
                            - float(value(jax.tree.map(lambda a, i=i: a[i], params), 0.3)), 0.0) for i in range(6)])
    assert expected > 0 and float(metrics["nonmonotone"]) == pytest.approx(expected, rel=1e-4, abs=1e-7)


def test_a_budgeted_editor_trains_on_the_divergence_alone_and_meets_the_budget(pool, breast_cancer, tmp_path):
    spec, params = pool
    requirement, batch = requirements.get("pruning"), fixed_batch(breast_cancer)
    config = EditorTrainConfig(**{**TINY.__dict__, "budget": True})
    untrained = gmn.init_editor(gmn.GMNConfig.for_specs([spec], hidden=16, layers=2, budget=requirement.target_range),
                                jax.random.key(0))
    before = editor.evaluation_loss(untrained, spec, requirement, params, batch, 1.0, 0.9)
    assert before["loss"] == pytest.approx(before["jsd"] + TINY.collapse_penalty * before["collapse"], rel=1e-5)
    editor.train_editor(spec, params, breast_cancer, config, workdir=tmp_path / "run", progress=False)
    loaded, record = editor.load_editor(tmp_path / "run")
    assert loaded.config.budget == requirement.target_range and record["config"]["budget"] is True
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.8 * losses[0]  # the divergence over sampled lambdas and targets falls as it trains
    edited = gmn.edit(loaded, spec, params, editor.condition(requirement, jnp.float32(1.0), jnp.float32(0.9)))
    for i in range(nets.population_size(params)):
        member = jax.tree.map(lambda leaf, i=i: leaf[i], edited)
        assert requirement.measure(spec, member, None) >= 0.9  # compliant by construction
