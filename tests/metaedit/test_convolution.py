"""The batching-aware convolution equals XLA's in value, gradient and Hessian, alone, vmapped over
networks (batched kernels) and nested in two vmaps; vmapped over networks on a CPU it is computed
without a grouped convolution, and one network keeps XLA's convolution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaedit import convolution

CASES = [((3, 6, 6, 2), (3, 3, 2, 4), "SAME"), ((3, 7, 5, 2), (3, 2, 2, 3), "VALID"), ((4, 9, 3), (5, 3, 2), "SAME")]


def _random(shape, seed):
    return jax.random.normal(jax.random.key(seed), shape)


def _close(a, b):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-4), a, b)


@pytest.mark.parametrize("x_shape, kernel_shape, padding", CASES)
def test_value_gradient_and_hessian_equal_xla(x_shape, kernel_shape, padding):
    x, kernel = _random(x_shape, 0), _random(kernel_shape, 1)
    ours = lambda x, k: jnp.sin(convolution.conv(x, k, padding)).sum()  # noqa: E731
    xla = lambda x, k: jnp.sin(convolution.xla_conv(x, k, padding)).sum()  # noqa: E731
    _close(convolution.conv(x, kernel, padding), convolution.xla_conv(x, kernel, padding))
    _close(convolution.sliced_conv(x, kernel, padding), convolution.xla_conv(x, kernel, padding))
    _close(jax.grad(ours, (0, 1))(x, kernel), jax.grad(xla, (0, 1))(x, kernel))
    _close(jax.hessian(ours, 1)(x, kernel), jax.hessian(xla, 1)(x, kernel))
    _close(jax.jacrev(jax.grad(ours, 1), 0)(x, kernel), jax.jacrev(jax.grad(xla, 1), 0)(x, kernel))
    _close(jax.jvp(lambda k: convolution.conv(x, k, padding), (kernel,), (x[..., :1, :1].sum() * kernel,)),
           jax.jvp(lambda k: convolution.xla_conv(x, k, padding), (kernel,), (x[..., :1, :1].sum() * kernel,)))


@pytest.mark.parametrize("x_shape, kernel_shape, padding", CASES)
def test_vmapped_over_networks_it_equals_xla_in_every_order_of_transforms(x_shape, kernel_shape, padding):
    xs, kernels = _random((2,) + x_shape, 2), _random((2,) + kernel_shape, 3)
    ours = lambda x, k: jnp.sin(convolution.conv(x, k, padding)).sum()  # noqa: E731
    xla = lambda x, k: jnp.sin(convolution.xla_conv(x, k, padding)).sum()  # noqa: E731
    _close(jax.vmap(lambda k: convolution.conv(xs[0], k, padding))(kernels),
           jax.vmap(lambda k: convolution.xla_conv(xs[0], k, padding))(kernels))
    _close(jax.jit(jax.vmap(jax.grad(ours, (0, 1))))(xs, kernels), jax.vmap(jax.grad(xla, (0, 1)))(xs, kernels))
    _close(jax.grad(lambda xs, ks: jax.vmap(ours)(xs, ks).sum(), (0, 1))(xs, kernels),
           jax.vmap(jax.grad(xla, (0, 1)))(xs, kernels))
    _close(jax.vmap(jax.hessian(ours, 1))(xs, kernels), jax.vmap(jax.hessian(xla, 1))(xs, kernels))
    nested = lambda conv: jax.vmap(lambda k: jax.vmap(lambda x: conv(x, k, padding))(xs))(kernels)  # noqa: E731
    _close(nested(convolution.conv), nested(convolution.xla_conv))


def _grouped_convolutions(function, *args) -> int:
    """How many convolutions with more than one feature group ``function``'s jaxpr runs."""
    def count(jaxpr):
        found = 0
        for equation in jaxpr.eqns:
            if equation.primitive.name == "conv_general_dilated" and equation.params["feature_group_count"] > 1:
                found += 1
            for value in equation.params.values():
                for inner in (value if isinstance(value, (list, tuple)) else [value]):
                    if hasattr(inner, "jaxpr"):
                        found += count(inner.jaxpr if hasattr(inner.jaxpr, "eqns") else inner.jaxpr.jaxpr)
                    elif hasattr(inner, "eqns"):
                        found += count(inner)
        return found
    return count(jax.make_jaxpr(function)(*args).jaxpr)


def test_a_population_on_a_cpu_runs_no_grouped_convolution_and_one_network_keeps_xlas():
    assert jax.default_backend() == "cpu"
    xs, kernels = _random((4, 3, 6, 6, 2), 4), _random((4, 3, 3, 2, 5), 5)
    loss = lambda x, k: convolution.conv(x, k).sum()  # noqa: E731
    xla_loss = lambda x, k: convolution.xla_conv(x, k).sum()  # noqa: E731
    assert _grouped_convolutions(jax.vmap(jax.grad(xla_loss, (0, 1))), xs, kernels) > 0  # what vmap makes of XLA's
    assert _grouped_convolutions(jax.vmap(jax.grad(loss, (0, 1))), xs, kernels) == 0
    one = jax.make_jaxpr(lambda x, k: convolution.conv(x, k))(xs[0], kernels[0])
    assert "conv_general_dilated" in str(one)


def test_an_unknown_padding_is_refused():
    with pytest.raises(ValueError, match="padding"):
        convolution.conv(jnp.zeros((1, 4, 4, 1)), jnp.zeros((3, 3, 1, 1)), "FULL")
