"""Backward linear-relaxation (CROWN-style) margin bounds with the *parameters* perturbed in a box.

The input x is a point; every weight and bias lies in a box ``W = Wc + delta``, ``|delta| <= r``.
A layer maps its input ``h`` (an interval ``hc +- s`` from the forward pass) to
``z = h * W + b`` (``*`` the dense or conv map), and for a coefficient ``L`` on z (one per sample
and margin specification) the bilinear part is relaxed with McCormick envelopes:

    L . (h * W) = L . (h * Wc) + L . (hc * delta) + L . (eta * delta),      eta = h - hc, |eta| <= s
    L . (hc * delta)  >= -|L| . (|hc| * r)        (exact for a dense layer: each weight is used once)
    L . (eta * delta) >= -|L| . (s * r)           (McCormick: the mean of the two envelope planes)

so ``L . (h * Wc)`` passes the coefficient back to h through the centre weights (the transposed
map), and the weight terms are concentrated on the spot. A ReLU ``h = relu(z)``, ``z in [l, u]``,
passes ``L`` back with the lower line ``h >= alpha z`` (alpha in [0, 1]: optimisable, default 1
where ``u > -l`` and 0 otherwise) where ``L >= 0`` and the upper line ``h <= u (z - l) / (u - l)``
where ``L < 0``; stable neurons are exact. The first layer's input is the point x, so its
weight terms are exact. Global average pooling is linear.

The pre-activation bounds ``[l, u]`` come from interval arithmetic. From the third layer on
(where two neurons can share a dependency; before it, interval arithmetic is already exact or the
inputs of a neuron are independent) layers with at most ``backward_width`` neurons tighten them by
the same backward pass started at each neuron (as CROWN does), neuron by neuron.

The specifications are the margins ``logit_y - logit_k`` (k != y), so the true and the other
logits' shared dependencies cancel; :func:`margin_lower` returns the worst of them, a lower bound
on the margin over the whole box, sound for any slopes in [0, 1]. Everything is differentiable
(the LID solver grows boxes through it).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from metaedit import nets


class Interval(NamedTuple):
    """center, radius [B, ...w]."""

    center: jax.Array
    radius: jax.Array


def _layer_interval(layer, h: Interval, wc, wr, bc, br) -> Interval:
    """Interval arithmetic of one layer with interval weights (midpoint-radius form)."""
    op = nets.linear_map(layer)
    return Interval(op(h.center, wc) + bc, op(h.radius, jnp.abs(wc) + wr) + op(jnp.abs(h.center), wr) + br)


def _head_input(spec, h: Interval) -> Interval:
    return Interval(nets.head_input(spec, h.center), nets.head_input(spec, h.radius))


def _transpose(layer, wc, coef: jax.Array, h_shape) -> jax.Array:
    """The transposed linear map of ``h -> h * wc``: coefficients [B, S, *out] -> [B, S, *h_shape]."""
    if layer.kind == "dense":
        return coef @ wc.T
    rows = coef.reshape((-1,) + coef.shape[2:])
    _, vjp = jax.vjp(lambda h: nets.linear_map(layer)(h, wc), jnp.zeros((rows.shape[0],) + tuple(h_shape), wc.dtype))
    return vjp(rows)[0].reshape(coef.shape[:2] + tuple(h_shape))


def _sum(coef: jax.Array, per_sample: jax.Array) -> jax.Array:
    """[B, S]: ``coef`` [B, S, *w] contracted with ``per_sample`` [B, *w] (shared by the S rows)."""
    return (coef * per_sample[:, None]).sum(tuple(range(2, coef.ndim)))


def _concentrate(coef: jax.Array, h: Interval | jax.Array, layer, wr, bc, br) -> jax.Array:
    """[B, S] the weight and bias terms of ``coef . (h * W + b)`` at their worst, for coef [B, S, *out]
    and the layer input h [B, *in] (an interval, or a point for the first layer)."""
    spread = jnp.abs(h) if not isinstance(h, Interval) else jnp.abs(h.center) + h.radius
    worst = nets.linear_map(layer)(spread, wr) + br
    axes = tuple(range(2, coef.ndim))
    return (coef * bc).sum(axes) - _sum(jnp.abs(coef), worst)


def _relu_back(coef: jax.Array, pre: tuple, slope: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """(coefficient on the pre-activation [B, S, *w], constant [B, S]) for ``coef . relu(z)``, z in
    [l, u] (pre: l, u [B, *w]); slope [B, S, *w] the lower slopes of crossing neurons (or None)."""
    lower, upper = pre[0][:, None], pre[1][:, None]
    active, crossing = lower >= 0, (lower < 0) & (upper > 0)
    up_slope = jnp.where(active, 1.0, jnp.where(crossing, upper / jnp.where(crossing, upper - lower, 1.0), 0.0))
    up_shift = jnp.where(crossing, -up_slope * lower, 0.0)
    if slope is None:
        slope = (upper > -lower).astype(coef.dtype)
    low_slope = jnp.where(active, 1.0, jnp.where(crossing, slope, 0.0))
    pre_coef = jnp.where(coef >= 0, coef * low_slope, coef * up_slope)
    constant = (jnp.minimum(coef, 0) * up_shift).sum(tuple(range(2, coef.ndim)))
    return pre_coef, constant


def _backward(spec, layers, upto: int, coef: jax.Array, inputs, pre, center, radius, x, slopes) -> jax.Array:
    """A lower bound [B, S] on ``coef . z_upto`` (z_upto the pre-activation of layer ``upto``), for
    coef [B, S, *out]; ``inputs[i]`` is layer i's input interval and ``pre[i]`` its pre-activation
    bounds ([B, *w] each); slopes[i] the lower ReLU slopes after layer i ([B, S, *w], or None)."""
    constant = jnp.zeros(coef.shape[:2], coef.dtype)
    for i in range(upto, -1, -1):
        layer = layers[i]
        wc, wr = center[layer.name]["kernel"], radius[layer.name]["kernel"]
        bc, br = center[layer.name]["bias"], radius[layer.name]["bias"]
        if i == 0:
            return constant + _concentrate(coef, x, layer, wr, bc, br) + _sum(coef, nets.linear_map(layer)(x, wc))
        h = inputs[i]
        constant = constant + _concentrate(coef, h, layer, wr, bc, br)
        coef = _transpose(layer, wc, coef, h.center.shape[1:])
        if isinstance(spec, nets.CNNSpec) and layer.kind == "dense":  # the head reads the pooled or flat map
            coef = nets.head_input_transpose(spec, coef)
        coef, extra = _relu_back(coef, pre[i - 1], None if slopes is None else slopes[i - 1])
        constant = constant + extra
    return constant


def default_backward_width() -> int:
    """Layers with at most this many neurons get backward-tightened pre-activation bounds."""
    return 64


def margin_lower(spec: nets.Spec, center, radius, x: jax.Array, y: jax.Array, slopes=None,
                 backward_width: int | None = None, competitors: jax.Array | None = None) -> jax.Array:
    """[B] a lower bound on ``logit_y - max_{k != y} logit_k`` over the box ``center +- radius``.

    x [B, *input_shape], y [B]; ``slopes`` (optional) a list with one array [B, C - 1, *w] per
    hidden layer of lower ReLU slopes in [0, 1] (any values in [0, 1] give a sound bound);
    ``competitors`` ([C] or [B, C] bool, optional): only those k count.
    """
    layers = nets.layers(spec)
    if isinstance(spec, nets.MLPSpec):
        x = x.reshape(x.shape[0], -1)
    inputs, pre = _forward(spec, center, radius, x, backward_width)
    classes = spec.num_classes
    others = (y[:, None] + 1 + jnp.arange(classes - 1)[None, :]) % classes  # [B, C-1]
    coef = jax.nn.one_hot(y, classes, dtype=x.dtype)[:, None, :] - jax.nn.one_hot(others, classes, dtype=x.dtype)
    lower = _backward(spec, layers, len(layers) - 1, coef, inputs, pre, center, radius, x, slopes)
    if competitors is not None:
        counts = jnp.broadcast_to(competitors, (x.shape[0], classes))
        lower = jnp.where(jnp.take_along_axis(counts, others, axis=1), lower, jnp.inf)
    return lower.min(axis=1)


def _pre_activations(spec, center, radius, x) -> list[tuple[jax.Array, jax.Array]]:
    """The hidden layers' pre-activation bounds (l, u), each [B, *w]."""
    if isinstance(spec, nets.MLPSpec):
        x = x.reshape(x.shape[0], -1)
    return _forward(spec, center, radius, x, None)[1]


def _forward(spec, center, radius, x, backward_width):
    """(each layer's input interval, each hidden layer's pre-activation bounds) for flat or image x."""
    layers = nets.layers(spec)
    backward_width = default_backward_width() if backward_width is None else backward_width
    h = Interval(x, jnp.zeros_like(x))
    inputs, pre = [], []
    for i, layer in enumerate(layers):
        if isinstance(spec, nets.CNNSpec) and layer.kind == "dense":
            h = _head_input(spec, h)
        inputs.append(h)
        c, r = center[layer.name], radius[layer.name]
        z = _layer_interval(layer, h, c["kernel"], r["kernel"], c["bias"], r["bias"])
        lower, upper = z.center - z.radius, z.center + z.radius
        width = 1
        for d in z.center.shape[1:]:
            width *= d
        if 2 <= i < len(layers) - 1 and width <= backward_width:
            lower, upper = _tightened(spec, layers, i, inputs, pre, center, radius, x, lower, upper)
        if i < len(layers) - 1:
            pre.append((lower, upper))
            h = Interval((jnp.maximum(lower, 0) + jnp.maximum(upper, 0)) / 2,
                         (jnp.maximum(upper, 0) - jnp.maximum(lower, 0)) / 2)
    return inputs, pre


def _tightened(spec, layers, i, inputs, pre, center, radius, x, lower, upper):
    """Layer i's pre-activation bounds, tightened neuron by neuron by a backward pass from each."""
    shape = lower.shape[1:]
    count = lower[0].size
    eye = jnp.eye(count, dtype=x.dtype).reshape((count,) + shape)
    coef = jnp.broadcast_to(jnp.concatenate([eye, -eye])[None], (x.shape[0], 2 * count) + shape)
    bound = _backward(spec, layers, i, coef, inputs, pre, center, radius, x, None)  # lower bounds of z and -z
    return (jnp.maximum(lower, bound[:, :count].reshape(lower.shape)),
            jnp.minimum(upper, -bound[:, count:].reshape(upper.shape)))


def initial_slopes(spec: nets.Spec, center, radius, x: jax.Array, y: jax.Array) -> list[jax.Array]:
    """The adaptive lower slopes (1 where ``u > -l``, else 0), one [B, C - 1, *w] array per hidden layer."""
    pre = _pre_activations(spec, center, radius, x)
    shape = (x.shape[0], spec.num_classes - 1)
    return [jnp.broadcast_to((hi > -lo).astype(x.dtype)[:, None], shape + lo.shape[1:]) for lo, hi in pre]


def optimised_margin(spec: nets.Spec, center, radius, x: jax.Array, y: jax.Array, steps: int = 20,
                     learning_rate: float = 0.1) -> jax.Array:
    """[B] :func:`margin_lower` with its ReLU slopes optimised per sample and specification (as alpha-CROWN
    does): projected Adam ascent on the slopes in [0, 1] from the adaptive ones, keeping each sample's
    best bound met (every iterate is sound, so the best is too). Samples are independent."""
    import optax

    slopes = initial_slopes(spec, center, radius, x, y)
    tx = optax.adam(learning_rate)

    def bound(s):
        return margin_lower(spec, center, radius, x, y, s)

    def body(carry, _):
        s, state, best = carry
        value, grad = jax.value_and_grad(lambda v: bound(v).sum())(s)
        updates, state = tx.update(jax.tree.map(jnp.negative, grad), state)
        s = jax.tree.map(lambda v: jnp.clip(v, 0.0, 1.0), optax.apply_updates(s, updates))
        return (s, state, jnp.maximum(best, bound(s))), None

    start = bound(slopes)
    (_, _, best), _ = jax.lax.scan(body, (slopes, tx.init(slopes), start), None, length=steps)
    return best
