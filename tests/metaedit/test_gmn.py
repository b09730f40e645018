import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaedit import gmn, graphs, nets
from metaedit.gmn import EditorError, GMNConfig
from tests.symmetries import permute_hidden

MLP = nets.MLPSpec((6,), (5, 4), 3)
CNN = nets.CNNSpec((6, 6, 2), (4, 3), 5)
CONDITION = jnp.array([0.3, 0.7])


def active_editor(specs, seed=0, keep_bias=0.0, messages="edges"):
    """An untrained editor whose edit is far from the identity: s = 1, masks undecided (keep bias 0)."""
    config = GMNConfig.for_specs(specs, hidden=16, layers=2, init_scale=1.0, keep_bias=keep_bias, head_init=1.0,
                                 messages=messages)
    return gmn.init_editor(config, jax.random.key(seed))


def with_random_biases(spec, key):
    params = nets.init(spec, key)
    keys = jax.random.split(jax.random.fold_in(key, 1), len(params))
    return {n: {"kernel": l["kernel"], "bias": 0.1 * jax.random.normal(k, l["bias"].shape)}
            for (n, l), k in zip(sorted(params.items()), keys)}


def assert_trees_close(a, b, atol=1e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=atol)


@pytest.mark.parametrize("messages", gmn.MESSAGES)
@pytest.mark.parametrize("spec", [MLP, CNN], ids=nets.describe)
def test_edit_is_equivariant_to_hidden_permutations(spec, messages):
    editor = active_editor([spec], messages=messages)
    params = with_random_biases(spec, jax.random.key(1))
    x = jax.random.normal(jax.random.key(2), (7,) + spec.input_shape)
    for seed in range(3):
        permuted, _ = permute_hidden(spec, params, np.random.default_rng(seed))
        np.testing.assert_allclose(nets.apply(spec, permuted, x), nets.apply(spec, params, x), atol=1e-5)
        edited = gmn.edit(editor, spec, params, CONDITION)
        edited_permuted = gmn.edit(editor, spec, permuted, CONDITION)
        assert_trees_close(edited_permuted, permute_hidden(spec, edited, np.random.default_rng(seed))[0])
        # the edited networks compute the same function
        np.testing.assert_allclose(nets.apply(spec, edited_permuted, x), nets.apply(spec, edited, x), atol=1e-4)
    changed = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(edited), jax.tree.leaves(params)))
    assert changed > 1e-2  # the editor really edits, so the test can fail


def test_input_features_keep_their_identity():
    editor = active_editor([MLP], keep_bias=4.0)  # masks keep every weight, so the residuals show
    params = with_random_biases(MLP, jax.random.key(3))
    perm = np.array([1, 0, 2, 3, 4, 5])
    swapped = {**params, "dense_0": {**params["dense_0"], "kernel": params["dense_0"]["kernel"][perm]}}
    edited = gmn.edit(editor, MLP, params, CONDITION)
    edited_swapped = gmn.edit(editor, MLP, swapped, CONDITION)
    gap = np.abs(np.asarray(edited_swapped["dense_0"]["kernel"]) - np.asarray(edited["dense_0"]["kernel"])[perm]).max()
    assert gap > 1e-3


def test_untrained_editor_with_zero_scale_is_the_identity():
    config = GMNConfig.for_specs([MLP, CNN])
    editor = gmn.init_editor(config, jax.random.key(0))
    assert float(editor.variables["params"]["output_scale"]) == pytest.approx(config.init_scale)
    zero = dataclasses.replace(editor, variables=jax.tree_util.tree_map_with_path(
        lambda path, v: jnp.zeros_like(v) if "output_scale" in jax.tree_util.keystr(path) else v,
        editor.variables))
    for spec in (MLP, CNN):
        params = with_random_biases(spec, jax.random.key(4))
        same = gmn.edit(zero, spec, params, CONDITION)
        for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(params)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        near = gmn.edit(editor, spec, params, CONDITION)  # s = 1e-3: almost the identity
        assert_trees_close(near, params, atol=0.05)


def test_hard_masks_are_exact_and_input_masks_remove_features():
    editor = active_editor([MLP], seed=5)
    params = with_random_biases(MLP, jax.random.key(6))
    raw = gmn.predict_edit(editor, MLP, params, CONDITION)
    topo = graphs.topology(MLP)
    node_keep = np.asarray(raw.node_logit) > 0
    assert raw.edge_logit.shape == (topo.num_edges, 1)
    edge_keep = (np.asarray(raw.edge_logit)[:, 0] > 0) & node_keep[topo.senders]
    assert 0 < edge_keep.mean() < 1  # the test sees both kept and removed weights
    edited = gmn.edit(editor, MLP, params, CONDITION)
    weights = np.asarray(graphs.params_to_graph(MLP, edited).edges["weight"][:, 0])
    assert (weights[~edge_keep] == 0).all() and (weights[edge_keep] != 0).all()
    dropped_inputs = np.flatnonzero(~node_keep[:6])
    assert (np.asarray(edited["dense_0"]["kernel"])[dropped_inputs] == 0).all()
    # soft (straight-through) masks have the same values and carry gradients
    soft = gmn.apply_edit(MLP, params, raw, hard=False)
    assert_trees_close(soft, edited, atol=1e-6)
    def kernel_total(logits):
        soft_edit = gmn.apply_edit(MLP, params, raw._replace(edge_logit=logits), hard=False)
        return sum(layer["kernel"].sum() for layer in soft_edit.values())

    grad = np.asarray(jax.grad(kernel_total)(raw.edge_logit))[:, 0]
    assert (grad[node_keep[topo.senders]] != 0).all() and (grad[~node_keep[topo.senders]] == 0).all()


def test_a_conv_edge_keeps_or_removes_each_of_its_taps():
    editor = active_editor([CNN], seed=7)
    params = with_random_biases(CNN, jax.random.key(8))
    raw = gmn.predict_edit(editor, CNN, params, CONDITION)
    topo = graphs.topology(CNN)
    assert raw.edge_logit.shape == (topo.num_edges, editor.config.edge_dim)
    keep = (np.asarray(raw.edge_logit) > 0) & (np.asarray(raw.node_logit) > 0)[topo.senders][:, None]
    weights = np.asarray(graphs.params_to_graph(CNN, gmn.edit(editor, CNN, params, CONDITION)).edges["weight"])
    assert (weights[~keep] == 0).all() and (weights[keep] != 0).all()
    partly = keep.any(1) & ~keep.all(1)
    assert partly.any()  # some edges keep part of their taps


def test_whole_zoo_is_edited_in_one_compile():
    editor = active_editor([MLP])
    keys = jax.random.split(jax.random.key(7), 8)
    zoo_a = jax.vmap(lambda k: with_random_biases(MLP, k))(keys)
    zoo_b = jax.tree.map(lambda x: x + 0.01, zoo_a)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def edit_zoo(params, condition):
        return jax.vmap(gmn.edit_one, in_axes=(None, None, 0, 0))(editor, MLP, params, condition)

    conditions = jnp.tile(CONDITION, (8, 1))
    out_a = edit_zoo(zoo_a, conditions)
    edit_zoo(zoo_b, conditions + 0.1)  # a second zoo of the same architecture: no new trace
    # the public function gives the same, member by member
    stacked = gmn.edit(editor, MLP, zoo_a, CONDITION)
    assert_trees_close(stacked, out_a, atol=1e-6)
    member = gmn.edit(editor, MLP, jax.tree.map(lambda x: x[3], zoo_a), CONDITION)
    assert_trees_close(member, jax.tree.map(lambda x: x[3], stacked), atol=1e-6)


@pytest.mark.parametrize("messages", gmn.MESSAGES)
def test_mixed_architecture_batch_matches_single_edits(messages):
    specs = [MLP, CNN, nets.MLPSpec((6,), (7,), 3)]
    editor = active_editor(specs, messages=messages)
    params = [with_random_biases(s, jax.random.key(i)) for i, s in enumerate(specs)]
    batch = graphs.batch_graphs(specs, params)
    conditions = jnp.array([[0.1, 0.2], [0.5, 0.5], [0.9, 0.1]])
    edited = gmn.edit_batch(editor, batch, conditions)
    for spec, p, c, e in zip(specs, params, conditions, edited):
        assert_trees_close(e, gmn.edit(editor, spec, p, c), atol=1e-5)


def test_bad_inputs_are_named():
    editor = active_editor([MLP])
    params = with_random_biases(MLP, jax.random.key(0))
    with pytest.raises(EditorError, match="has 8 inputs; this editor reads at most 6"):
        gmn.edit(editor, nets.MLPSpec((8,), (5, 4), 3), nets.init(nets.MLPSpec((8,), (5, 4), 3), jax.random.key(0)), CONDITION)
    with pytest.raises(EditorError, match="weights per edge"):
        narrow = nets.CNNSpec((6, 6, 2), (4, 3), 3)
        gmn.edit(editor, narrow, nets.init(narrow, jax.random.key(0)), CONDITION)
    with pytest.raises(nets.SpecError, match=r"dense_1/kernel has shape \(5, 4\); mlp:5,3 needs"):
        gmn.edit(editor, nets.MLPSpec((6,), (5, 3), 3), params, CONDITION)
    with pytest.raises(EditorError, match=r"condition has shape \(3,\); expected \[2\]"):
        gmn.edit(editor, MLP, params, jnp.zeros(3))
    nan = {**params, "dense_2": {**params["dense_2"], "bias": params["dense_2"]["bias"].at[0].set(jnp.nan)}}
    with pytest.raises(nets.SpecError, match="dense_2/bias holds NaN"):
        gmn.edit(editor, MLP, nan, CONDITION)
    with pytest.raises(EditorError, match="messages must be one of edges, weights, got 'nodes'"):
        GMNConfig.for_specs([MLP], messages="nodes")


def _with_magnitude_head(editor, seed):
    """The editor with a random (non-zero) magnitude head, so that the magnitude term shows."""
    def fill(path, v):
        if "magnitude_head" in jax.tree_util.keystr(path):
            return 3.0 * jax.random.normal(jax.random.key(seed), v.shape)
        return v
    return dataclasses.replace(editor, variables=jax.tree_util.tree_map_with_path(fill, editor.variables))


def test_the_magnitude_term_is_standardised_per_network_and_keeps_both_layouts_and_equivariance():
    weight = jnp.array([[0.5, 0.0], [2.0, 0.0], [0.1, 0.3], [4.0, 1.0], [0.0, 0.0]])
    ids = jnp.array([0, 0, 0, 1, 1])
    z = np.asarray(gmn._standard_log_magnitude(weight, ids, 2))
    assert (z[np.asarray(weight) == 0] == 0).all()
    first = z[:3][np.asarray(weight[:3]) != 0]
    assert abs(first.mean()) < 1e-5 and abs(first.std() - 1) < 1e-3
    specs = [MLP, CNN]
    config = GMNConfig.for_specs(specs, hidden=16, layers=2, init_scale=1.0, keep_bias=4.0, head_init=0.3,
                                 magnitude=True)
    plain = gmn.init_editor(config, jax.random.key(0))
    editor = _with_magnitude_head(plain, 5)  # a head that drops some masks, not all, in each check below
    params = [with_random_biases(s, jax.random.key(i)) for i, s in enumerate(specs)]
    conditions = jnp.array([[0.5, 0.5], [0.9, 0.1]])
    for spec, p, c, e in zip(specs, params, conditions, gmn.edit_batch(editor, graphs.batch_graphs(specs, params),
                                                                       conditions)):
        assert_trees_close(e, gmn.edit(editor, spec, p, c), atol=1e-5)  # gathers and dense blocks agree
        masks = lambda ed: [np.asarray(layer["kernel"]) == 0 for layer in ed.values()]  # noqa: E731
        changed = [a != b for a, b in zip(masks(gmn.edit(editor, spec, p, c)), masks(gmn.edit(plain, spec, p, c)))]
        assert any(m.any() for m in changed)  # the term moves masks, so these checks can fail
    permuted, _ = permute_hidden(CNN, params[1], np.random.default_rng(0))
    edited = gmn.edit(editor, CNN, params[1], CONDITION)
    dropped = sum(int((np.asarray(layer["kernel"]) == 0).sum()) for layer in edited.values())
    assert 0 < dropped < sum(layer["kernel"].size for layer in edited.values())  # a check that can fail
    assert_trees_close(gmn.edit(editor, CNN, permuted, CONDITION),
                       permute_hidden(CNN, edited, np.random.default_rng(0))[0])
    identity = gmn.edit(editor, CNN, params[1], jnp.array([0.0, 0.5]))  # lambda 0: no mask at all
    assert all((np.asarray(layer["kernel"]) != 0).all() for layer in identity.values())


def test_budget_threshold_counts_real_entries_per_graph():
    score = jnp.array([[3.0, 9.0], [1.0, 9.0], [2.0, 9.0], [5.0, 5.0], [0.5, 9.0]])
    real = jnp.array([[1, 0], [1, 0], [1, 0], [1, 1], [1, 0]])
    ids = jnp.array([0, 0, 0, 1, 1])
    # graph 0: real scores 3, 1, 2; half of 3 rounds up to 2 removed (1 and 2). Graph 1: 5, 5, 0.5, a
    # third of 3 is 1 removed (0.5); a padded entry (score 9) is never counted
    np.testing.assert_array_equal(gmn.budget_threshold(score, real, ids, jnp.array([0.5, 1 / 3])), [2.0, 0.5])
    assert np.isneginf(np.asarray(gmn.budget_threshold(score, real, ids, jnp.array([0.0, 0.0])))).all()
    # a tie at the threshold is removed whole: at least the asked share goes
    np.testing.assert_array_equal(gmn.budget_threshold(score, real, ids, jnp.array([1.0, 0.5])), [3.0, 5.0])
    # random scores of both signs in three graphs: numpy's sort gives the same k-th smallest value
    rng = np.random.default_rng(0)
    score = rng.normal(0, 3, (60, 4)).astype(np.float32)
    real = rng.random((60, 4)) < 0.7
    ids = np.repeat(np.arange(3), 20)
    fraction = np.array([0.05, 0.5, 0.99], np.float32)
    found = np.asarray(gmn.budget_threshold(jnp.asarray(score), jnp.asarray(real), jnp.asarray(ids), jnp.asarray(fraction)))
    for g in range(3):
        values = np.sort(score[ids == g][real[ids == g]])
        assert found[g] == values[int(np.ceil(fraction[g] * values.size - 1e-6)) - 1]


@pytest.mark.parametrize("spec", [MLP, CNN], ids=nets.describe)
def test_a_budgeted_editor_removes_lambda_times_target_and_starts_as_magnitude_pruning(spec):
    low, high = 0.5, 0.99
    config = GMNConfig.for_specs([MLP, CNN], hidden=16, layers=2, budget=(low, high))
    editor = gmn.init_editor(config, jax.random.key(0))
    params = with_random_biases(spec, jax.random.key(4))
    kernels = lambda p: np.concatenate([np.asarray(l["kernel"]).ravel() for l in p.values()])  # noqa: E731
    total = kernels(params).size
    for lam, target in [(1.0, 0.9), (0.5, 0.8), (0.0, 0.9), (1.0, 0.5)]:
        condition = jnp.array([lam, (target - low) / (high - low)])
        edited = kernels(gmn.edit(editor, spec, params, condition))
        removed = (edited == 0).sum()
        assert removed == int(np.ceil(lam * target * total - 1e-6))  # exactly the budget, no neuron removed
        if lam:  # at initialisation the scores are the magnitudes (the heads add little): mostly the same cut
            by_magnitude = np.abs(kernels(params)) > np.sort(np.abs(kernels(params)))[removed - 1]
            assert ((edited != 0) == by_magnitude).mean() > 0.9
    # the same edits from a padded batch of both architectures (per-graph budgets in one sort)
    other = with_random_biases(MLP if spec is CNN else CNN, jax.random.key(5))
    conditions = jnp.array([[1.0, 0.8], [0.6, 0.3]])
    batch = graphs.batch_graphs([spec, MLP if spec is CNN else CNN], [params, other])
    for s, p, c, e in zip(batch.specs, [params, other], conditions, gmn.edit_batch(editor, batch, conditions)):
        assert_trees_close(e, gmn.edit(editor, s, p, c), atol=1e-5)
    with pytest.raises(EditorError, match="budget must be a target range"):
        GMNConfig.for_specs([MLP], budget=(0.9, 0.5))
