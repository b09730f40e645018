import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaedit import nets
from metaedit.nets import SpecError

SPECS = [
    nets.MLPSpec((10,), (8, 6), 3),
    nets.MLPSpec((4, 4, 1), (), 2),
    nets.CNNSpec((8, 8, 1), (4, 6), 10),
    nets.CNNSpec((40, 1), (5, 3), 10, kernel_size=5, padding=("valid", "same"), head="flatten"),
]


@pytest.mark.parametrize("spec", SPECS, ids=nets.describe)
def test_shapes_counts_and_apply(spec):
    params = nets.init(spec, jax.random.key(0))
    nets.validate_params(spec, params)
    sizes = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))
    assert sizes == nets.num_params(spec)
    assert jax.tree.map(jnp.shape, params) == nets.param_shapes(spec)
    logits = nets.apply(spec, params, jnp.ones((5,) + spec.input_shape))
    assert logits.shape == (5, spec.num_classes) and jnp.isfinite(logits).all()
    assert nets.spec_from_dict(nets.spec_to_dict(spec)) == spec
    assert hash(spec) == hash(nets.spec_from_dict(nets.spec_to_dict(spec)))


def test_cnn_is_a_real_convolution():
    """The 2-D conv with a one-hot kernel shifts the image; pooling then averages it."""
    spec = nets.CNNSpec((5, 5, 1), (1,), 1)
    kernel = np.zeros((3, 3, 1, 1), np.float32)
    kernel[1, 1, 0, 0] = 2.0  # centre tap: conv(x) = 2x
    params = {"conv_0": {"kernel": jnp.asarray(kernel), "bias": jnp.zeros(1)},
              "dense_0": {"kernel": jnp.ones((1, 1)), "bias": jnp.zeros(1)}}
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 5, 5, 1)), jnp.float32)
    np.testing.assert_allclose(nets.apply(spec, params, x)[:, 0], 2 * x.mean(axis=(1, 2, 3)), rtol=1e-6)


def test_paper_cnn_valid_padding_and_flatten_head():
    """The safe-updates paper's Split MNIST CNN: 6,179 parameters, a 24 x 24 map after the valid
    convolution, the head reading the flattened map in row-major order; its string round-trips."""
    spec = nets.paper_cnn()
    assert nets.num_params(spec) == 6179 and spec.feature_shape == (24, 24, 1)
    assert nets.parse_arch(nets.describe(spec), (28, 28, 1), 10) == spec
    params = nets.init(spec, jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (2, 28, 28, 1))
    h = jax.nn.relu(jax.lax.conv_general_dilated(x, params["conv_0"]["kernel"], (1, 1), "VALID",
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC")) + params["conv_0"]["bias"])
    h = jax.nn.relu(nets.conv(h, params["conv_1"]["kernel"]) + params["conv_1"]["bias"])
    want = h.reshape(2, -1) @ params["dense_0"]["kernel"] + params["dense_0"]["bias"]
    np.testing.assert_allclose(nets.apply(spec, params, x), want, rtol=1e-5, atol=1e-6)
    for bad, match in ((dict(padding="full"), "padding must be"), (dict(padding=("valid",)), "one per convolution"),
                       (dict(head="max"), "head must be"), (dict(kernel_size=15, padding="valid"), "to nothing")):
        with pytest.raises(SpecError, match=match):
            nets.CNNSpec((28, 28, 1), (8, 1), 10, **{"kernel_size": 5, **bad})
    with pytest.raises(SpecError, match="bad CNN option 'k5x'"):
        nets.parse_arch("cnn:8,1/k5x", (28, 28, 1), 10)


def test_init_scale_scales_kernels():
    spec = SPECS[0]
    a = nets.init(spec, jax.random.key(1))
    b = nets.init(spec, jax.random.key(1), 0.5)
    np.testing.assert_allclose(b["dense_1"]["kernel"], 0.5 * a["dense_1"]["kernel"], rtol=1e-6)


def test_validate_names_the_bad_leaf():
    spec = SPECS[0]
    params = nets.init(spec, jax.random.key(0))
    bad_shape = jax.tree.map(lambda x: x, params)
    bad_shape["dense_1"]["kernel"] = jnp.zeros((8, 5))
    with pytest.raises(SpecError, match=r"dense_1/kernel has shape \(8, 5\); mlp:8,6 needs \[8, 6\]"):
        nets.validate_params(spec, bad_shape)
    nan = jax.tree.map(lambda x: x, params)
    nan["dense_2"]["bias"] = nan["dense_2"]["bias"].at[1].set(jnp.nan)
    with pytest.raises(SpecError, match=r"dense_2/bias holds NaN or Inf \(first at index \(1,\)\)"):
        nets.validate_params(spec, nan)
    inf = jax.tree.map(lambda x: x, params)
    inf["dense_0"]["kernel"] = inf["dense_0"]["kernel"].at[2, 3].set(jnp.inf)
    with pytest.raises(SpecError, match=r"dense_0/kernel holds NaN or Inf \(first at index \(2, 3\)\)"):
        nets.validate_params(spec, inf)
    missing = {k: v for k, v in params.items() if k != "dense_2"}
    with pytest.raises(SpecError, match=r"missing layers \['dense_2'\]"):
        nets.validate_params(spec, missing)
    integer = jax.tree.map(lambda x: x, params)
    integer["dense_0"]["bias"] = jnp.zeros(8, jnp.int32)
    with pytest.raises(SpecError, match="dense_0/bias has dtype int32"):
        nets.validate_params(spec, integer)
    with pytest.raises(SpecError, match=r"dense_1/kernel has shape \(8, 6\); mlp:8,7 needs"):
        nets.validate_params(nets.MLPSpec((10,), (8, 7), 3), params)


def test_validate_stacked_population():
    spec = SPECS[2]
    stacked = jax.vmap(lambda k: nets.init(spec, k))(jax.random.split(jax.random.key(0), 4))
    nets.validate_params(spec, stacked, batch_dims=1)
    with pytest.raises(SpecError, match=r"conv_0/kernel has shape \(4, 3, 3, 1, 4\); cnn:4,6 needs \[3, 3, 1, 4\]"):
        nets.validate_params(spec, stacked)
    uneven = jax.tree.map(lambda x: x, stacked)
    uneven["dense_0"]["bias"] = uneven["dense_0"]["bias"][:3]
    with pytest.raises(SpecError, match="population axes"):
        nets.validate_params(spec, uneven, batch_dims=1)


def test_parse_arch_and_bad_specs():
    assert nets.parse_arch("mlp:32,32", (104,), 2) == nets.MLPSpec((104,), (32, 32), 2)
    assert nets.parse_arch("cnn:8,16", (8, 8, 1), 10) == nets.CNNSpec((8, 8, 1), (8, 16), 10)
    with pytest.raises(SpecError, match="unknown architecture kind 'rnn'"):
        nets.parse_arch("rnn:4", (3,), 2)
    with pytest.raises(SpecError, match="widths must be integers"):
        nets.parse_arch("mlp:a,b", (3,), 2)
    with pytest.raises(SpecError, match="needs image-like inputs"):
        nets.parse_arch("cnn:4", (104,), 2)
    with pytest.raises(SpecError, match="hidden must be a tuple of positive integers"):
        nets.MLPSpec((3,), (0,), 2)
    with pytest.raises(SpecError, match=r"the network takes \[batch, \*\(10,\)\]"):
        nets.apply(SPECS[0], nets.init(SPECS[0], jax.random.key(0)), jnp.ones((2, 11)))


@pytest.mark.parametrize("spec", [nets.MLPSpec((10,), (16, 8), 3), nets.CNNSpec((8, 8, 1), (4, 6), 3),
                                  nets.CNNSpec((8, 8, 1), (4, 6), 3, padding=("valid", "same"), head="flatten")],
                         ids=["mlp", "cnn", "cnn-flatten"])
def test_rescale_changes_the_weights_not_the_function(spec):
    params = jax.tree.map(lambda a: a + 0.1, nets.init(spec, jax.random.key(0)))  # non-zero biases too
    moved = nets.rescale(spec, params, jax.random.key(1), 3.0)
    x = jax.random.normal(jax.random.key(2), (5,) + spec.input_shape)
    np.testing.assert_allclose(nets.apply(spec, moved, x), nets.apply(spec, params, x), atol=1e-5)
    first = nets.layers(spec)[0].name
    assert float(jnp.abs(moved[first]["kernel"] - params[first]["kernel"]).max()) > 0.1
    same = nets.rescale(spec, params, jax.random.key(1), 1.0)  # spread 1: no change
    assert all(bool(jnp.array_equal(a, b)) for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(params)))
