"""Zonotopes with a box part and low-rank shared generators, and the projection onto them.

``theta = center + radius * e + sum_k z_k generators[k]``, ``e in [-1, 1]^n`` (one symbol per
parameter: the axis-aligned part), ``z in [-1, 1]^r`` (r shared symbols); ``generators`` leaves
have a leading axis ``[r, ...]``. With zero generators it is the box ``center +- radius``, so a
zonotope started from a box is never smaller than it.

Size: the exact lower bound ``sum_i log(2 radius_i) + log(1 + sum_{k,i} |G_ki| / radius_i)`` of
the log-volume (the volume's terms that use all axis generators or all but one; exact for r = 1).

Projection: for fixed ``z`` the best ``e`` is a clip, so the projection minimises the convex
``f(z) = || dist(p - c - G^T z, [-D, D]) ||^2`` over ``z in [-1, 1]^r`` with FISTA (projected,
accelerated gradient) to a tolerance; the answer ``c + D e + G^T z`` is inside by construction. A
point that is already inside (the solver finds a witness ``z``) is returned unchanged.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from certify.domains.base import Domain, DomainError, Params, check_finite, check_shapes, flat, log_widths, \
    named_leaves, pytree_dataclass, unflat
from certify.domains.box import Box


@pytree_dataclass
class Zonotope(Domain):
    """``center + radius * e + sum_k z_k generators[k]``, ``e, z`` in ``[-1, 1]``; generators [r, ...]."""

    center: Params
    radius: Params
    generators: Params
    kind = "zonotope"

    @property
    def rank(self) -> int:
        return jax.tree.leaves(self.generators)[0].shape[0]

    @jax.jit
    def hull(self) -> Box:
        half = jax.tree.map(lambda r, g: r + jnp.abs(g).sum(0), self.radius, self.generators)
        return Box(jax.tree.map(jnp.subtract, self.center, half), jax.tree.map(jnp.add, self.center, half))

    def as_zonotope(self, rank: int | None = None) -> "Zonotope":
        return self

    @jax.jit
    def log_volume(self, weights: Params | None = None, floor: float = 1e-30) -> jax.Array:
        ratio = jax.tree.map(lambda r, g: jnp.where(r > 0, jnp.abs(g).sum(0) / jnp.maximum(r, floor), 0.0),
                             self.radius, self.generators)
        return log_widths(self.radius, weights) + jnp.log1p(sum(x.sum() for x in jax.tree.leaves(ratio)))

    def generator_matrix(self) -> jax.Array:
        """[r, n] generators as rows over the flattened parameters."""
        return jnp.concatenate([g.reshape(g.shape[0], -1) for g in jax.tree.leaves(self.generators)], axis=1)

    def contains(self, params: Params, rtol: float = 0.0) -> bool:
        """Checked through the witness of :func:`project_zonotope`: points on the boundary need a
        little slack, as the witness ``z`` is found numerically."""
        result = _project_jit(self, params)
        if bool(result.inside):
            return True
        scale = float(jnp.abs(flat(self.center)).max() + jnp.abs(flat(self.radius)).max()
                      + jnp.abs(self.generator_matrix()).sum(0).max(initial=0.0))
        return bool(result.distance <= rtol * scale)

    def project(self, params: Params) -> Params:
        return _project_jit(self, params).point

    @jax.jit
    def scaled(self, point: Params, scale: float) -> "Zonotope":
        return Zonotope(jax.tree.map(lambda p, c: p + scale * (c - p), point, self.center),
                        jax.tree.map(lambda r: scale * r, self.radius),
                        jax.tree.map(lambda g: scale * g, self.generators))

    def to_tree(self) -> dict:
        return {"center": self.center, "radius": self.radius, "generators": self.generators}

    @classmethod
    def from_tree(cls, tree: dict) -> "Zonotope":
        return cls(tree["center"], tree["radius"], tree["generators"])

    @classmethod
    def abstract_tree(cls, params_like: Params, rank: int) -> dict:
        generators = jax.tree.map(lambda p: jax.ShapeDtypeStruct((rank,) + tuple(p.shape), p.dtype), params_like)
        return {"center": params_like, "radius": params_like, "generators": generators}

    @classmethod
    def initial_theta(cls, problem) -> dict:
        """Log of the axis radius beyond ``|p - c|``, and per generator a log-length and a direction.
        A problem started from a domain (``problem.start``) starts equal to that domain's hull."""
        c = problem.config
        log_radius = jax.tree.map(lambda p: jnp.full_like(p, c.init_log_radius), problem.params)
        if problem.start is not None:
            log_radius = jax.tree.map(lambda r, p, ctr: jnp.log(jnp.maximum(r - jnp.abs(p - ctr), 1e-30)),
                                      problem.start.hull().radius, problem.params, problem.center)
        leaves, treedef = jax.tree.flatten(problem.params)
        keys = jax.random.split(jax.random.key(c.seed), len(leaves))
        directions = jax.tree.unflatten(treedef, [
            jax.random.normal(k, (c.rank,) + leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)])
        return {"log_radius": log_radius, "log_length": jnp.full((c.rank,), c.init_log_radius, leaves[0].dtype),
                "directions": directions}

    @classmethod
    def from_theta(cls, problem, theta: dict) -> "Zonotope":
        """Centre fixed at ``problem.center``, axis radius ``|p - c| + m exp(a)``, generators of length
        ``exp(log_length_k)`` along the masked, normalised directions."""
        p, m = problem.params, problem.mask
        radius = jax.tree.map(lambda p, c, m, a: jnp.abs(p - c) + m * jnp.exp(a), p, problem.center, m,
                              theta["log_radius"])
        masked = jax.tree.map(lambda m, d: m * d, m, theta["directions"])
        norms = jnp.sqrt(sum((d.reshape(d.shape[0], -1) ** 2).sum(1) for d in jax.tree.leaves(masked)))
        scale = jnp.exp(theta["log_length"]) / jnp.maximum(norms, 1e-30)
        generators = jax.tree.map(lambda d: d * scale.reshape((-1,) + (1,) * (d.ndim - 1)), masked)
        return cls(problem.center, radius, generators)

    @classmethod
    def from_domain(cls, domain: Domain, rank: int) -> "Zonotope":
        return domain.as_zonotope(rank)

    def validate(self, params_like: Params | None = None) -> None:
        parts = {"center": self.center, "radius": self.radius, "generators": self.generators}
        check_finite(parts)
        check_shapes(parts, self.center if params_like is None else params_like, stacked=("generators",))
        for path, radius in named_leaves(self.radius):
            if (radius < 0).any():
                raise DomainError(f"domain radius{path} is negative")
        ranks = {v.shape[0] for _, v in named_leaves(self.generators)}
        if len(ranks) != 1:
            raise DomainError(f"zonotope generators disagree on the rank axis: {sorted(ranks)}")


class ZonotopeProjection(NamedTuple):
    """point: the projection; z [r]: its shared symbols; inside: whether the input was already inside;
    distance: ||input - point||."""

    point: Params
    z: jax.Array
    inside: jax.Array
    distance: jax.Array


def project_zonotope(zonotope: Zonotope, params: Params, iterations: int = 500) -> ZonotopeProjection:
    """Projection onto a zonotope by FISTA over its shared symbols (see the module docstring)."""
    p, c, d = flat(params), flat(zonotope.center), flat(zonotope.radius)
    g = zonotope.generator_matrix()
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

    z = jnp.zeros(g.shape[0], p.dtype)
    if g.shape[0]:
        (z, _, _), _ = jax.lax.scan(step, (z, z, jnp.ones((), p.dtype)), None, length=iterations)
    u = residual - g.T @ z
    e = jnp.clip(u / jnp.where(d > 0, d, 1.0), -1.0, 1.0) * (d > 0)
    inside = (jnp.abs(u) <= d).all()
    point = jnp.where(inside, p, c + d * e + g.T @ z)
    return ZonotopeProjection(unflat(point, params), z, inside, jnp.linalg.norm(point - p))


_project_jit = jax.jit(project_zonotope, static_argnames="iterations")


def zonotope_around(params: Params, rank: int, radius: Params | float = 0.0, generators: Params | None = None) -> Zonotope:
    """The zonotope centred at ``params`` with axis ``radius`` and ``rank`` generators (zero by default)."""
    if not isinstance(radius, dict):
        radius = jax.tree.map(lambda p: jnp.full_like(p, radius), params)
    if generators is None:
        generators = jax.tree.map(lambda p: jnp.zeros((rank,) + p.shape, p.dtype), params)
    return Zonotope(params, radius, generators)
