"""Projection onto certified domains, and an optax wrapper that keeps every update inside one.

* Box: the exact Euclidean projection is a clip.
* Zonotope ``c + D e + G^T z``: for fixed ``z`` the best ``e`` is a clip, so the projection
  minimises the convex ``f(z) = || dist(p - c - G^T z, [-D, D]) ||^2`` over ``z in [-1, 1]^r`` with
  FISTA (projected, accelerated gradient) to a tolerance; the answer ``c + D e + G^T z`` is inside
  by construction. A point that is already inside (the solver finds a witness ``z``) is returned
  unchanged.
* A union of domains: the projection onto the nearest one.
* :func:`projected`: any optax transformation followed by projection of the updated parameters.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from certify.domains import Box, Domain, Zonotope

Params = Any


def _flat(tree) -> jax.Array:
    return jnp.concatenate([leaf.reshape(-1) for leaf in jax.tree.leaves(tree)])


def _generator_matrix(zonotope: Zonotope) -> jax.Array:
    """[r, n] generators as rows over the flattened parameters."""
    return jnp.concatenate([g.reshape(g.shape[0], -1) for g in jax.tree.leaves(zonotope.generators)], axis=1)


def project_box(box: Box, params: Params) -> Params:
    """The nearest point of ``box`` (exact; points inside come back unchanged)."""
    return jax.tree.map(lambda p, lo, hi: jnp.clip(p, lo, hi), params, box.lo, box.hi)


class ZonotopeProjection(NamedTuple):
    """point: the projection; z [r]: its shared symbols; inside: whether the input was already inside;
    distance: ||input - point||."""

    point: Params
    z: jax.Array
    inside: jax.Array
    distance: jax.Array


def project_zonotope(zonotope: Zonotope, params: Params, iterations: int = 500) -> ZonotopeProjection:
    """Projection onto a zonotope by FISTA over its shared symbols (see the module docstring)."""
    _, treedef = jax.tree.flatten(params)
    shapes = [leaf.shape for leaf in jax.tree.leaves(params)]
    p, c, d = _flat(params), _flat(zonotope.center), _flat(zonotope.radius)
    g = _generator_matrix(zonotope)
    residual = p - c

    def excess(z):
        u = residual - g.T @ z
        return u - jnp.clip(u, -d, d)

    lipschitz = jnp.maximum(jnp.linalg.norm(g, 2) ** 2, 1e-30)

    def step(carry, _):
        z, y, t = carry
        grad = -g @ excess(y)  # gradient of f/2 at y
        z_next = jnp.clip(y - grad / lipschitz, -1.0, 1.0)
        t_next = (1 + jnp.sqrt(1 + 4 * t * t)) / 2
        y_next = z_next + ((t - 1) / t_next) * (z_next - z)
        return (z_next, y_next, t_next), None

    z0 = jnp.zeros(g.shape[0], p.dtype)
    if g.shape[0]:
        (z, _, _), _ = jax.lax.scan(step, (z0, z0, jnp.ones((), p.dtype)), None, length=iterations)
    else:
        z = z0
    u = residual - g.T @ z
    e = jnp.clip(u / jnp.where(d > 0, d, 1.0), -1.0, 1.0) * (d > 0)
    inside = (jnp.abs(u) <= d).all()
    projected = c + d * e + g.T @ z
    point_flat = jnp.where(inside, p, projected)
    leaves, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        leaves.append(point_flat[start:start + size].reshape(shape))
        start += size
    point = jax.tree.unflatten(treedef, leaves)
    return ZonotopeProjection(point, z, inside, jnp.linalg.norm(point_flat - p))


def project(domain: Domain, params: Params) -> Params:
    """The projection of ``params`` onto a box or a zonotope."""
    if isinstance(domain, Box):
        return project_box(domain, params)
    return project_zonotope(domain, params).point


def distance(a: Params, b: Params) -> jax.Array:
    return jnp.sqrt(sum(((x - y) ** 2).sum() for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))))


def _nearest(domains: Sequence[Domain], params: Params) -> tuple[Params, jax.Array]:
    """The projection onto the nearest domain and its index (traceable: no host round trip)."""
    candidates = [project(d, params) for d in domains]
    index = jnp.argmin(jnp.stack([distance(c, params) for c in candidates]))
    return jax.tree.map(lambda *leaves: jnp.stack(leaves)[index], *candidates), index


def project_union(domains: Sequence[Domain], params: Params) -> tuple[Params, int]:
    """The projection onto the nearest of several domains, and that domain's index."""
    if not domains:
        raise ValueError("project_union needs at least one domain")
    point, index = _nearest(domains, params)
    return point, int(index)


def contains(domain: Domain, params: Params, rtol: float = 0.0) -> bool:
    """Whether ``params`` lie in ``domain``, up to ``rtol`` times the domain's largest coordinate
    (points on a zonotope's boundary need a little slack, as its witness ``z`` is found numerically).
    A zonotope is checked through the witness of :func:`project_zonotope`."""
    if isinstance(domain, Box):
        scale = max(float(jnp.abs(x).max()) for x in jax.tree.leaves(domain.lo) + jax.tree.leaves(domain.hi))
        slack = rtol * scale
        return bool(all(((lo - slack) <= p).all() & (p <= (hi + slack)).all() for p, lo, hi in
                        zip(jax.tree.leaves(params), jax.tree.leaves(domain.lo), jax.tree.leaves(domain.hi))))
    result = project_zonotope(domain, params)
    if bool(result.inside):
        return True
    scale = float(jnp.abs(_flat(domain.center)).max() + jnp.abs(_flat(domain.radius)).max()
                  + jnp.abs(_generator_matrix(domain)).sum(0).max(initial=0.0))
    return bool(result.distance <= rtol * scale)


def projected(inner: optax.GradientTransformation, domain: Domain | Sequence[Domain]) -> optax.GradientTransformation:
    """``inner``'s update followed by projection onto ``domain`` (or the nearest of several).

    The returned updates move the parameters exactly to the projected point, so a run of
    ``optax.apply_updates`` never leaves the domain. ``update`` needs ``params``.
    """
    many = not isinstance(domain, (Box, Zonotope))

    def init(params):
        return inner.init(params)

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("projected(...).update needs params")
        updates, state = inner.update(updates, state, params)
        target = optax.apply_updates(params, updates)
        target = _nearest(domain, target)[0] if many else project(domain, target)
        return jax.tree.map(jnp.subtract, target, params), state

    return optax.GradientTransformation(init, update)
