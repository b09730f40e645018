"""Bound propagation with the *parameters* perturbed over a domain and a concrete input batch.

An activation is an affine form over the domain's shared symbols ``z`` plus an interval remainder:
``a = center + coefs . z + [-radius, radius]`` (center, radius [B, ...w], coefs [B, ...w, r]).
A weight is ``W = Wc + G . z + [-D, D]`` (:class:`certify.domains.Zonotope`; a box is the case
r = 0, where everything below reduces to midpoint-radius interval arithmetic).

Dense / conv layer (``*`` is the layer's linear map, ``|.|`` elementwise, sums over k):
  center' = ac * Wc + bc;   coefs'_k = ac * G_k + A_k * Wc + Gb_k
  radius' = ar * (|Wc| + sum|G_k| + D) + (|ac| + sum|A_k|) * D + (sum|A_k|) * (sum|G_k|) + Db
The first layer is exact (the input is a point: A = 0, ar = 0). The last term is the weight x
activation product of the shared symbols, added as an error term.
ReLU: interval ReLU when r = 0; otherwise the standard zonotope relaxation (identity / zero for
stable neurons; ``lambda a + mu +- mu`` with ``lambda = u / (u - l)``, ``mu = -lambda l / 2`` for
crossing ones). A CNN's head input (global average pooling or flattening) is linear, so exact.

:func:`output_bounds` gives logit bounds and a lower bound on each sample's margin (true-class
logit minus the best other logit) over the whole domain; for a zonotope it keeps the better of the
affine bound and the interval bound of the zonotope's interval hull (both are sound). With
``bound="linear"`` the margin also gets the backward linear relaxation of
:mod:`certify.relaxation` over the domain's interval hull, and the best of all is kept.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from certify import relaxation
from certify.domains import Domain
from metaedit import nets

BOUNDS = ("interval", "linear")
"""Bound kinds: ``interval`` (interval arithmetic for a box, affine arithmetic for a zonotope) and
``linear`` (that, and the backward linear relaxation, keeping the better margin)."""


class BoundError(ValueError):
    """An unknown bound kind."""


def check_bound(bound: str) -> str:
    if bound not in BOUNDS:
        raise BoundError(f"bound must be {' or '.join(map(repr, BOUNDS))}, got {bound!r}")
    return bound


class Affine(NamedTuple):
    """center, radius [B, ...w]; coefs [B, ...w, r]."""

    center: jax.Array
    coefs: jax.Array
    radius: jax.Array

    def lower(self) -> jax.Array:
        return self.center - jnp.abs(self.coefs).sum(-1) - self.radius

    def upper(self) -> jax.Array:
        return self.center + jnp.abs(self.coefs).sum(-1) + self.radius


class Bounds(NamedTuple):
    """logits_lo, logits_hi [B, C]; margin_lo [B] (a lower bound on logit_y - max_{j != y} logit_j)."""

    logits_lo: jax.Array
    logits_hi: jax.Array
    margin_lo: jax.Array


def _linear(layer: nets.Layer, a: Affine, wc, g, d, bc, gb, db, exact_input: bool = False) -> Affine:
    """One dense or conv layer (see the module docstring). g: [r, *kernel], gb: [r, out].
    ``exact_input``: the input is a point (the first layer: A = 0, ar = 0). The terms that are zero
    there, and for a box (r = 0), are left out: the same values without their matmuls (half of a
    box's first layer, and of its gradient)."""
    op = nets.linear_map(layer)
    rank, out = g.shape[0], wc.shape[-1]
    center = op(a.center, wc) + bc
    if rank:
        abs_g = jnp.abs(g).sum(0)
        # ac * G_k for every k at once: the generators side by side as extra output channels
        stacked = jnp.moveaxis(g, 0, -2).reshape(wc.shape[:-1] + (rank * out,))
        coefs = jnp.moveaxis(op(a.center, stacked).reshape(center.shape[:-1] + (rank, out)), -2, -1)
        if not exact_input:
            # A_k * Wc for every k at once: the symbols folded into the batch axis
            folded = jnp.moveaxis(a.coefs, -1, 0).reshape((-1,) + a.coefs.shape[1:-1])
            coefs = coefs + jnp.moveaxis(op(folded, wc).reshape((rank,) + center.shape), 0, -1)
        coefs = coefs + gb.T
    else:
        coefs = jnp.zeros(center.shape + (0,), center.dtype)
    if exact_input:
        radius = op(jnp.abs(a.center), d)
    elif rank:
        abs_a = jnp.abs(a.coefs).sum(-1)
        radius = op(a.radius, jnp.abs(wc) + abs_g + d) + op(jnp.abs(a.center) + abs_a, d) + op(abs_a, abs_g)
    else:
        radius = op(a.radius, jnp.abs(wc) + d) + op(jnp.abs(a.center), d)
    return Affine(center, coefs, radius + db)


def _relu(a: Affine) -> Affine:
    lower, upper = a.lower(), a.upper()
    if a.coefs.shape[-1] == 0:  # interval arithmetic
        lo, hi = jnp.maximum(lower, 0), jnp.maximum(upper, 0)
        return Affine((lo + hi) / 2, a.coefs, (hi - lo) / 2)
    crossing = (lower < 0) & (upper > 0)
    slope = jnp.where(upper <= 0, 0.0, jnp.where(crossing, upper / jnp.where(crossing, upper - lower, 1.0), 1.0))
    shift = jnp.where(crossing, -slope * lower / 2, 0.0)
    return Affine(slope * a.center + shift, slope[..., None] * a.coefs, slope * a.radius + shift)


def propagate(spec: nets.Spec, domain: Domain, x: jax.Array) -> Affine:
    """The logits [B, C] as affine forms over the domain's symbols, for inputs x [B, *input_shape]."""
    z = domain.as_zonotope()
    rank = z.rank
    if isinstance(spec, nets.MLPSpec):
        x = x.reshape(x.shape[0], -1)
    a = Affine(x, jnp.zeros(x.shape + (rank,), x.dtype), jnp.zeros_like(x))
    all_layers = nets.layers(spec)
    for i, layer in enumerate(all_layers):
        if isinstance(spec, nets.CNNSpec) and layer.kind == "dense":  # pooled or flattened: linear
            a = Affine(nets.head_input(spec, a.center), nets.head_input(spec, a.coefs, trailing=1),
                       nets.head_input(spec, a.radius))
        c, r, g = z.center[layer.name], z.radius[layer.name], z.generators[layer.name]
        a = _linear(layer, a, c["kernel"], g["kernel"], r["kernel"], c["bias"], g["bias"], r["bias"], exact_input=i == 0)
        if i < len(all_layers) - 1:
            a = _relu(a)
    return a


def rivals(y: jax.Array, num_classes: int, competitors: jax.Array | None = None) -> jax.Array:
    """[B, C] bool: the logits a sample's true logit must beat: every j != y, or only those where
    ``competitors`` ([C] or [B, C] bool, e.g. a task-incremental task's own classes) is True."""
    others = jnp.arange(num_classes)[None, :] != y[:, None]
    return others if competitors is None else others & competitors


def margins(logits: jax.Array, y: jax.Array, competitors: jax.Array | None = None) -> jax.Array:
    """[B] a network's margin ``logit_y - max`` over the rivals (:func:`rivals`) for logits [B, C]."""
    true = jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
    return true - jnp.where(rivals(y, logits.shape[1], competitors), logits, -jnp.inf).max(axis=1)


def _margin_lower(logits: Affine, y: jax.Array, competitors=None) -> jax.Array:
    """min over the rivals j of a lower bound on logit_y - logit_j, using the shared symbols' cancellation."""
    take = lambda v: jnp.take_along_axis(v, y[:, None, None] if v.ndim == 3 else y[:, None], axis=1)  # noqa: E731
    diff_center = take(logits.center) - logits.center
    diff_coefs = take(logits.coefs) - logits.coefs
    diff_radius = take(logits.radius) + logits.radius
    lower = diff_center - jnp.abs(diff_coefs).sum(-1) - diff_radius
    return jnp.where(rivals(y, logits.center.shape[1], competitors), lower, jnp.inf).min(axis=1)


@functools.partial(jax.jit, static_argnames=("spec", "bound"))
def output_bounds(spec: nets.Spec, domain: Domain, x: jax.Array, y: jax.Array, bound: str = "interval",
                  slopes=None, competitors: jax.Array | None = None) -> Bounds:
    """Logit bounds and margin lower bounds over ``domain`` for inputs x [B, ...] with labels y [B]
    (jitted); ``slopes`` are the linear relaxation's lower ReLU slopes (see :mod:`certify.relaxation`);
    ``competitors`` ([C] or [B, C] bool, optional) limits the margin to those logits (a
    task-incremental task's classes): an infinite margin where no rival is left."""
    check_bound(bound)
    box = domain.hull()
    hull = propagate(spec, box, x)
    lo, hi, margin = hull.lower(), hull.upper(), _margin_lower(hull, y, competitors)
    if domain.rank:
        affine = propagate(spec, domain, x)
        lo, hi = jnp.maximum(lo, affine.lower()), jnp.minimum(hi, affine.upper())
        margin = jnp.maximum(margin, _margin_lower(affine, y, competitors))
    if bound == "linear":
        margin = jnp.maximum(margin, relaxation.margin_lower(spec, box.center, box.radius, x, y, slopes,
                                                             competitors=competitors))
    return Bounds(lo, hi, margin)
