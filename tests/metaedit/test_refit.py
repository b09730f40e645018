"""Layer-wise refits: each refit layer is the ridge least-squares solution (numpy, float64), on the edit's
non-zeros only when masked (only the leading layers asked for), and the masked solve itself gives exact
zeros; a refit recovers much of what zeroing weights lost; where a refit does not apply, it says why."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaedit import compare, nets, refit, requirements
from metaedit.datasets import Dataset


def _data(n=1200, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    x[:, 5] = x[:, 0] + 0.1 * x[:, 5]  # a column close to another
    y = (x[:, 0] - x[:, 1] + 0.5 * x[:, 2] > 0).astype(np.int32)
    return Dataset("toy", x[:800], y[:800], x[800:], y[800:], 2)


def _network(spec, seed=0):
    return nets.init(spec, jax.random.key(seed), scale=1.5)


def _expected(h, target, mask=None):
    """Ridge least squares in float64, per output column on ``mask``'s support."""
    design = np.concatenate([h, np.ones((len(h), 1))], 1)
    gram, rhs = design.T @ design / len(h), design.T @ target / len(h)
    ridge = refit.RIDGE * np.trace(gram) / len(gram)
    if mask is None:
        return np.linalg.solve(gram + ridge * np.eye(len(gram)), rhs)
    out = np.zeros_like(rhs)
    for j in range(rhs.shape[1]):
        on = np.append(mask[:, j] != 0, True)
        out[on, j] = np.linalg.solve(gram[np.ix_(on, on)] + ridge * np.eye(on.sum()), rhs[on, j])
    return out


@pytest.mark.parametrize("masked", [False, True])
def test_each_refit_layer_is_the_ridge_least_squares_solution(masked):
    dataset = _data()
    spec = nets.MLPSpec((6,), (5,), 2)
    original = _network(spec)
    names = [layer.name for layer in nets.layers(spec)]
    kernel = np.asarray(original[names[0]]["kernel"]).copy()
    kernel[np.abs(kernel) < np.median(np.abs(kernel))] = 0.0  # half the first layer pruned
    edited = {names[0]: {"kernel": jnp.asarray(kernel), "bias": original[names[0]]["bias"]},
              names[1]: dict(original[names[1]], kernel=original[names[1]]["kernel"].at[0, :].set(0.0))}
    x = jnp.asarray(dataset.x_train)
    result = refit.refit(spec, original, edited, x, start=0, masked=masked)
    xs = np.asarray(x, np.float64)
    first = _expected(xs, xs @ np.asarray(original[names[0]]["kernel"]) + np.asarray(original[names[0]]["bias"]),
                      kernel if masked else None)
    np.testing.assert_allclose(result[names[0]]["kernel"], first[:-1], rtol=2e-3, atol=2e-4)
    np.testing.assert_allclose(result[names[0]]["bias"], first[-1], rtol=2e-3, atol=2e-4)
    hidden = np.maximum(xs @ np.asarray(result[names[0]]["kernel"], np.float64) + np.asarray(result[names[0]]["bias"]), 0)
    target = np.maximum(xs @ np.asarray(original[names[0]]["kernel"]) + np.asarray(original[names[0]]["bias"]), 0)
    target = target @ np.asarray(original[names[1]]["kernel"]) + np.asarray(original[names[1]]["bias"])
    second = _expected(hidden, target, np.asarray(edited[names[1]]["kernel"]) if masked else None)
    np.testing.assert_allclose(result[names[1]]["kernel"], second[:-1], rtol=2e-3, atol=2e-4)
    np.testing.assert_allclose(result[names[1]]["bias"], second[-1], rtol=2e-3, atol=2e-4)
    unchanged = refit.refit(spec, original, edited, x, start=2)
    jax.tree.map(np.testing.assert_array_equal, unchanged, edited)
    if masked:  # only the first layer keeps its zeros: the second is refit on every weight
        first_only = refit.refit(spec, original, edited, x, start=0, masked=True, masked_layers=1)
        np.testing.assert_array_equal(first_only[names[0]]["kernel"], result[names[0]]["kernel"])
        free = _expected(hidden, target)
        np.testing.assert_allclose(first_only[names[1]]["kernel"], free[:-1], rtol=2e-3, atol=2e-4)


def test_the_masked_solve_itself_returns_exact_zeros_off_the_support():
    rng = np.random.default_rng(0)
    design = np.concatenate([rng.normal(size=(300, 5)), np.ones((300, 1))], 1).astype(np.float32)
    gram, rhs = design.T @ design / 300, design.T @ rng.normal(size=(300, 4)).astype(np.float32) / 300
    mask = (rng.random((5, 4)) > 0.5).astype(np.float32)
    solution = np.asarray(refit._solve(jnp.asarray(gram), jnp.asarray(rhs), jnp.asarray(mask)))
    assert (solution[:-1][mask == 0] == 0).all()  # before any masking of the result
    assert (solution[:-1][mask == 1] != 0).all() and (solution[-1] != 0).all()


def test_a_refit_recovers_what_pruning_lost_and_keeps_the_sparsity():
    dataset = _data()
    spec = nets.MLPSpec((6,), (16,), 2)
    originals = jax.vmap(lambda k: nets.init(spec, k, scale=1.5))(jax.random.split(jax.random.key(1), 3))
    pruned = jax.tree.map(lambda leaf: jnp.where(jnp.abs(leaf) > jnp.quantile(jnp.abs(leaf), 0.7), leaf, 0.0)
                          if leaf.ndim == 3 else leaf, originals)
    rebuilt, seconds = refit.refit_edits(spec, originals, pruned, dataset)
    x = jnp.asarray(dataset.x_test)
    agree = lambda ps: (jax.vmap(lambda p: nets.apply(spec, p, x).argmax(-1))(ps)  # noqa: E731
                        == jax.vmap(lambda p: nets.apply(spec, p, x).argmax(-1))(originals)).mean(1)
    assert (agree(rebuilt) > agree(pruned)).all(), (agree(rebuilt), agree(pruned))
    assert seconds > 0


def test_where_a_refit_is_refused():
    assert compare.refit_reason(requirements.PRUNING) is None
    assert "not met by removing weights" in compare.refit_reason(requirements.get("fairness", (), 2))


def _windows(h, size, same):
    """numpy im2col by loops: [n * positions, size * size * c] in (row offset, column offset, channel) order."""
    if same:
        pad = (size - 1) // 2
        h = np.pad(h, ((0, 0), (pad, size - 1 - pad), (pad, size - 1 - pad), (0, 0)))
    rows, cols = h.shape[1] - size + 1, h.shape[2] - size + 1
    return np.stack([h[:, i:i + size, j:j + size, :].reshape(len(h), -1) for i in range(rows) for j in range(cols)],
                    1).reshape(-1, size * size * h.shape[-1])


def test_a_cnn_convolution_is_refit_on_its_input_windows_and_keeps_its_zeros():
    spec = nets.parse_arch("cnn:3,4/k3/valid,same", (6, 6, 2), 3)
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(40, 6, 6, 2)).astype(np.float32))
    original = nets.init(spec, jax.random.key(2), scale=1.5)
    edited = jax.tree.map(lambda leaf: jnp.where(jnp.abs(leaf) > jnp.quantile(jnp.abs(leaf), 0.5), leaf, 0.0)
                          if leaf.ndim > 1 else leaf, original)
    result = refit.refit(spec, original, edited, x, start=0, masked=True)
    kernel0 = np.asarray(original["conv_0"]["kernel"], np.float64)
    windows = _windows(np.asarray(x, np.float64), 3, same=False)
    first = _expected(windows, windows @ kernel0.reshape(-1, 3) + np.asarray(original["conv_0"]["bias"]),
                      np.asarray(edited["conv_0"]["kernel"]).reshape(-1, 3))
    np.testing.assert_allclose(np.asarray(result["conv_0"]["kernel"]).reshape(-1, 3), first[:-1], rtol=2e-3, atol=2e-4)
    np.testing.assert_allclose(result["conv_0"]["bias"], first[-1], rtol=2e-3, atol=2e-4)
    for name in ("conv_0", "conv_1", "dense_0"):
        zeros = np.asarray(edited[name]["kernel"]) == 0
        assert zeros.any() and (np.asarray(result[name]["kernel"])[zeros] == 0).all()
    agree = lambda p: float((nets.apply(spec, p, x).argmax(-1) == nets.apply(spec, original, x).argmax(-1)).mean())  # noqa: E731
    assert agree(result) >= agree(edited)
