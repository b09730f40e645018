"""Domains in parameter space: boxes and (box + low-rank) zonotopes over a params pytree.

* :class:`Box`: ``lo <= theta <= hi`` per parameter (``lo``/``hi`` are pytrees shaped like params).
* :class:`Zonotope`: ``theta = center + radius * e + sum_k z_k * generators[k]`` with
  ``e in [-1, 1]^n`` (one symbol per parameter: the axis-aligned part) and ``z in [-1, 1]^r``
  (r shared symbols: the low-rank part). ``generators`` leaves have a leading axis ``[r, ...]``.
  With ``r = 0`` or zero generators it is the box ``center +- radius``, so a zonotope is never
  smaller than the box it starts from.

Size: ``log_volume`` is the log-volume of a box, and for a zonotope the exact lower bound
``sum_i log(2 radius_i) + log(1 + sum_{k,i} |G_ki| / radius_i)`` (the volume's terms that use all
axis generators or all but one; exact for r = 1). ``mean_log_width`` divides it by the number of
parameters that are free to move. All functions are pure and work under jit/vmap unless they say
they check concrete values.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np

Params = Any


class DomainError(ValueError):
    """A domain is malformed (lo > hi, non-finite, generators of the wrong shape, ...)."""


class Box(NamedTuple):
    """``lo <= theta <= hi``; lo and hi are params-shaped pytrees."""

    lo: Params
    hi: Params

    @property
    def center(self) -> Params:
        return jax.tree.map(lambda l, h: (l + h) / 2, self.lo, self.hi)

    @property
    def radius(self) -> Params:
        return jax.tree.map(lambda l, h: (h - l) / 2, self.lo, self.hi)


class Zonotope(NamedTuple):
    """``center + radius * e + sum_k z_k generators[k]``, ``e, z`` in ``[-1, 1]``; generators [r, ...]."""

    center: Params
    radius: Params
    generators: Params

    @property
    def rank(self) -> int:
        return jax.tree.leaves(self.generators)[0].shape[0]


Domain = Union[Box, Zonotope]


def as_zonotope(domain: Domain) -> Zonotope:
    """A zonotope equal to ``domain`` (a box becomes rank 0: no shared generators)."""
    if isinstance(domain, Zonotope):
        return domain
    generators = jax.tree.map(lambda l: jnp.zeros((0,) + l.shape, l.dtype), domain.lo)
    return Zonotope(domain.center, domain.radius, generators)


def box_around(params: Params, radius: Params | float = 0.0) -> Box:
    """The box ``params +- radius`` (a zero-size box by default)."""
    if not isinstance(radius, dict):
        radius = jax.tree.map(lambda p: jnp.full_like(p, radius), params)
    return Box(jax.tree.map(lambda p, r: p - r, params, radius), jax.tree.map(lambda p, r: p + r, params, radius))


def zonotope_around(params: Params, rank: int, radius: Params | float = 0.0, generators: Params | None = None) -> Zonotope:
    """The zonotope centred at ``params`` with axis ``radius`` and ``rank`` generators (zero by default)."""
    if not isinstance(radius, dict):
        radius = jax.tree.map(lambda p: jnp.full_like(p, radius), params)
    if generators is None:
        generators = jax.tree.map(lambda p: jnp.zeros((rank,) + p.shape, p.dtype), params)
    return Zonotope(params, radius, generators)


def interval_hull(domain: Domain) -> Box:
    """The smallest box holding ``domain`` (itself for a box)."""
    if isinstance(domain, Box):
        return domain
    half = jax.tree.map(lambda r, g: r + jnp.abs(g).sum(0), domain.radius, domain.generators)
    return Box(jax.tree.map(jnp.subtract, domain.center, half), jax.tree.map(jnp.add, domain.center, half))


def log_volume(domain: Domain, weights: Params | None = None, floor: float = 1e-30) -> jax.Array:
    """Log-volume (a box) or its lower bound (a zonotope, see the module docstring).

    Parameters with zero width (frozen) are left out rather than sending the volume to -inf.
    ``weights`` (a params-shaped pytree of non-negative numbers) weights each parameter's log-width.
    """
    radius = domain.radius
    weights = jax.tree.map(jnp.ones_like, radius) if weights is None else weights
    free = jax.tree.map(lambda r: r > 0, radius)
    terms = jax.tree.map(lambda r, w, f: jnp.where(f, w * jnp.log(jnp.maximum(2 * r, floor)), 0.0),
                         radius, weights, free)
    total = sum(t.sum() for t in jax.tree.leaves(terms))
    if isinstance(domain, Zonotope):
        ratio = jax.tree.map(lambda r, g, f: jnp.where(f, jnp.abs(g).sum(0) / jnp.maximum(r, floor), 0.0),
                             radius, domain.generators, free)
        total = total + jnp.log1p(sum(x.sum() for x in jax.tree.leaves(ratio)))
    return total


def num_free(domain: Domain) -> jax.Array:
    """Number of parameters with a positive axis width."""
    return sum((r > 0).sum() for r in jax.tree.leaves(domain.radius))


def mean_log_width(domain: Domain) -> jax.Array:
    """``log_volume / num_free``: a size comparable across networks of different sizes."""
    return log_volume(domain) / jnp.maximum(num_free(domain), 1)


@functools.partial(jax.jit, static_argnames=("count", "corners"))
def sample(domain: Domain, key: jax.Array, count: int, corners: bool = False) -> Params:
    """``count`` parameter vectors inside ``domain`` (stacked ``[count, ...]``).

    Uniform in the symbols ``e`` (and ``z``); with ``corners`` every symbol is +-1 instead, so the
    samples are vertices (box corners), where bounds are tightest to violate.
    """
    leaves, treedef = jax.tree.flatten(domain.radius)
    sizes = [int(np.prod(l.shape)) for l in leaves]
    dtype = leaves[0].dtype
    rank = domain.rank if isinstance(domain, Zonotope) else 0
    shape = (count, sum(sizes) + rank)  # one draw for every symbol: e (per parameter), then z
    if corners:
        flat = jax.random.rademacher(key, shape, jnp.int32).astype(dtype)
    else:
        flat = jax.random.uniform(key, shape, dtype, minval=-1.0, maxval=1.0)
    bounds = np.cumsum([0] + sizes)
    e = jax.tree.unflatten(treedef, [flat[:, a:b].reshape((count,) + l.shape)
                                     for a, b, l in zip(bounds[:-1], bounds[1:], leaves)])
    points = jax.tree.map(lambda c, r, s: c + r * s, domain.center, domain.radius, e)
    if isinstance(domain, Box):
        return points
    z = flat[:, bounds[-1]:]
    return jax.tree.map(lambda p, g: p + jnp.tensordot(z, g, axes=(1, 0)), points, domain.generators)


def validate(domain: Domain, params_like: Params | None = None) -> None:
    """Raises :class:`DomainError` naming the first problem (checks concrete values; not under jit).

    Checks finiteness, ``lo <= hi`` (box) or ``radius >= 0`` (zonotope), that generators have one
    shared leading rank axis, and, with ``params_like``, that every leaf has the params' shape.
    """
    def named(tree):
        flat, _ = jax.tree_util.tree_flatten_with_path(tree)
        return [(jax.tree_util.keystr(p), np.asarray(v)) for p, v in flat]

    parts = {"lo": domain.lo, "hi": domain.hi} if isinstance(domain, Box) else {
        "center": domain.center, "radius": domain.radius, "generators": domain.generators}
    for part, tree in parts.items():
        for path, value in named(tree):
            if not np.isfinite(value).all():
                raise DomainError(f"domain {part}{path} holds NaN or Inf")
    reference = params_like if params_like is not None else (domain.lo if isinstance(domain, Box) else domain.center)
    ref_shapes = {path: v.shape for path, v in named(reference)}
    for part, tree in parts.items():
        shapes = {path: v.shape for path, v in named(tree)}
        if set(shapes) != set(ref_shapes):
            raise DomainError(f"domain {part} has leaves {sorted(shapes)}; expected {sorted(ref_shapes)}")
        for path, shape in shapes.items():
            want = ref_shapes[path]
            if part == "generators":
                if shape[1:] != want:
                    raise DomainError(f"domain generators{path} has shape {shape}; expected [r, {', '.join(map(str, want))}]")
            elif shape != want:
                raise DomainError(f"domain {part}{path} has shape {shape}; expected {want}")
    if isinstance(domain, Box):
        for (path, lo), (_, hi) in zip(named(domain.lo), named(domain.hi)):
            if (lo > hi).any():
                index = tuple(int(i) for i in np.argwhere(lo > hi)[0])
                raise DomainError(f"domain lo > hi at {path}{list(index)}: {lo[index]} > {hi[index]}")
    else:
        for path, radius in named(domain.radius):
            if (radius < 0).any():
                raise DomainError(f"domain radius{path} is negative")
        ranks = {v.shape[0] for _, v in named(domain.generators)}
        if len(ranks) != 1:
            raise DomainError(f"zonotope generators disagree on the rank axis: {sorted(ranks)}")
