"""Stride-1 convolution that stays fast when a population of networks is vmapped on a CPU.

``jax.vmap`` over networks batches the kernels, and XLA turns a convolution with batched kernels
into a grouped convolution (one group per network). XLA:CPU runs grouped convolutions slowly:
training 128 digits CNNs (``cnn:16,32``, batch 32) took 5.5 s per step that way. Written as shifted
slices of the input, concatenated along the channels and multiplied by the flattened kernel (an
im2col built from slices), the same step takes 0.2 s; for one network, though, XLA's own
convolution is 1.3-4x faster (forward and gradient measured on digits and MNIST CNNs). So
:func:`conv` chooses by what is actually batched:

* Its value is a ``jax.custom_batching.custom_vmap`` function: XLA's convolution when the kernel is
  not batched (a batched input is folded into the batch axis), the sliced form for each network
  when the kernel is batched (and the backend is a CPU; other backends keep XLA's convolution).
* Its derivative (``jax.custom_jvp``) is the sliced form, which is linear and transposes by
  itself, when that form is small (``window * c_in * output positions <= SLICED_TANGENT_MAX``) on a
  CPU, and XLA's convolution otherwise. Reverse mode cannot go through a ``custom_vmap`` rule, so
  the tangent cannot choose by batching; small convolutions are the ones a population is trained on
  here (digits-sized), large ones (28 x 28 MNIST) are trained one network at a time.

The result equals ``jax.lax.conv_general_dilated`` to float rounding, at every order of
differentiation (the tests compare values, gradients and Hessians).
"""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
from jax.custom_batching import custom_vmap

PADDINGS = ("SAME", "VALID")
SLICED_TANGENT_MAX = 16_384  # window * c_in * output positions per example (digits' cnn:16,32: 9,216)


def conv(x: jax.Array, kernel: jax.Array, padding: str = "SAME") -> jax.Array:
    """Stride-1 convolution: x [B, *spatial, c_in], kernel [*window, c_in, c_out] ->
    [B, *spatial', c_out] ("SAME" keeps the spatial size, "VALID" shrinks it by window - 1)."""
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}; got {padding!r}")
    return _conv(padding)(x, kernel)


def xla_conv(x: jax.Array, kernel: jax.Array, padding: str = "SAME") -> jax.Array:
    """XLA's convolution (``lax.conv_general_dilated``) with the shapes of :func:`conv`."""
    rank = kernel.ndim - 2
    spatial = "HW"[:rank]
    numbers = (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
    return jax.lax.conv_general_dilated(x, kernel, window_strides=(1,) * rank, padding=padding,
                                        dimension_numbers=numbers)


def output_spatial(spatial: tuple[int, ...], window: tuple[int, ...], padding: str) -> tuple[int, ...]:
    """The spatial shape of a stride-1 convolution's output: ``spatial`` ("SAME") or shrunk by
    ``window - 1`` ("VALID"; either case)."""
    if padding.upper() == "VALID":
        return tuple(s - w + 1 for s, w in zip(spatial, window))
    return tuple(spatial)


def patches(x: jax.Array, window: tuple[int, ...], padding: str = "SAME") -> jax.Array:
    """[B, *spatial', prod(window) * c_in]: the input window at every output position of a stride-1
    convolution of x [B, *spatial, c_in], as shifted slices concatenated along the channels (in the
    order of a kernel's leading axes, so ``patches @ kernel.reshape(-1, c_out)`` is the convolution)."""
    out = output_spatial(x.shape[1:-1], window, padding)
    if padding == "SAME":
        x = jnp.pad(x, [(0, 0)] + [((w - 1) // 2, w - 1 - (w - 1) // 2) for w in window] + [(0, 0)])
    slices = [x[(slice(None),) + tuple(slice(o, o + n) for o, n in zip(offset, out)) + (slice(None),)]
              for offset in itertools.product(*(range(w) for w in window))]
    return jnp.concatenate(slices, axis=-1)


def sliced_conv(x: jax.Array, kernel: jax.Array, padding: str = "SAME") -> jax.Array:
    """The same convolution as :func:`patches` times the kernel flattened to [prod(window) * c_in, c_out]."""
    return patches(x, kernel.shape[:-2], padding) @ kernel.reshape(-1, kernel.shape[-1])


def _sliced_tangents(x_shape: tuple[int, ...], kernel_shape: tuple[int, ...], padding: str) -> bool:
    window = kernel_shape[:-2]
    positions = math.prod(output_spatial(x_shape[1:-1], window, padding))
    return jax.default_backend() == "cpu" and math.prod(window) * kernel_shape[-2] * positions <= SLICED_TANGENT_MAX


def _zero(tangent) -> bool:
    return isinstance(tangent, jax.custom_derivatives.SymbolicZero)


@functools.cache
def _conv(padding: str):
    """The differentiable, batching-aware convolution for one padding (built once per padding)."""

    @custom_vmap
    def value(x, kernel):
        return xla_conv(x, kernel, padding)

    @value.def_vmap
    def _batched(axis_size, in_batched, x, kernel):
        x_batched, kernel_batched = in_batched
        if not kernel_batched:  # fold the mapped axis into the batch; an outer vmap may batch the kernel
            y = value(x.reshape((-1,) + x.shape[2:]), kernel)
            return y.reshape(x.shape[:2] + y.shape[1:]), True
        # the backend, not the device of this computation, decides (a CPU computation on a GPU host
        # keeps XLA's grouped convolution): a matter of speed only, both forms are the same function
        if jax.default_backend() != "cpu":
            if not x_batched:
                x = jnp.broadcast_to(x, (axis_size,) + x.shape)
            return jax.vmap(functools.partial(xla_conv, padding=padding))(x, kernel), True
        flat = kernel.reshape(axis_size, -1, kernel.shape[-1])  # [P, prod(window) * c_in, c_out]
        if not x_batched:  # one input for every network: its windows once
            return jnp.einsum("...k,pko->p...o", patches(x, kernel.shape[1:-2], padding), flat), True
        return jax.vmap(functools.partial(sliced_conv, padding=padding))(x, kernel), True

    @jax.custom_jvp
    def differentiable(x, kernel):
        return value(x, kernel)

    @functools.partial(differentiable.defjvp, symbolic_zeros=True)
    def _jvp(primals, tangents):
        x, kernel = primals
        dx, dkernel = tangents
        linear = functools.partial(
            sliced_conv if _sliced_tangents(x.shape, kernel.shape, padding) else xla_conv, padding=padding)
        y = differentiable(x, kernel)  # not value(): a custom_vmap function must not be differentiated
        tangent = jnp.zeros_like(y)
        if not _zero(dx):
            tangent = tangent + linear(dx, kernel)
        if not _zero(dkernel):
            tangent = tangent + linear(x, dkernel)
        return y, tangent

    return differentiable
