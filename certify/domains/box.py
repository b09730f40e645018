"""Boxes (orthotopes): ``lo <= theta <= hi`` per parameter."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from certify.domains.base import (Domain, DomainError, Params, check_finite, check_shapes, log_widths, named_leaves,
                                   pytree_dataclass)


@pytree_dataclass
class Box(Domain):
    """``lo <= theta <= hi``; lo and hi are params-shaped pytrees."""

    lo: Params
    hi: Params
    kind = "box"

    @property
    def center(self) -> Params:
        return jax.tree.map(lambda l, h: (l + h) / 2, self.lo, self.hi)

    @property
    def radius(self) -> Params:
        return jax.tree.map(lambda l, h: (h - l) / 2, self.lo, self.hi)

    def hull(self) -> "Box":
        return self

    def as_zonotope(self, rank: int | None = None):
        from certify.domains.zonotope import Zonotope

        generators = jax.tree.map(lambda l: jnp.zeros((rank or 0,) + l.shape, l.dtype), self.lo)
        return Zonotope(self.center, self.radius, generators)

    @jax.jit
    def log_volume(self, weights: Params | None = None) -> jax.Array:
        return log_widths(self.radius, weights)

    def contains(self, params: Params, rtol: float = 0.0) -> bool:
        return bool(_box_contains(self, params, rtol))

    def project(self, params: Params) -> Params:
        """The exact Euclidean projection: a clip."""
        return jax.tree.map(lambda p, lo, hi: jnp.clip(p, lo, hi), params, self.lo, self.hi)

    @jax.jit
    def scaled(self, point: Params, scale: float) -> "Box":
        return Box(jax.tree.map(lambda p, l: p + scale * (l - p), point, self.lo),
                   jax.tree.map(lambda p, h: p + scale * (h - p), point, self.hi))

    def to_tree(self) -> dict:
        return {"lo": self.lo, "hi": self.hi}

    @classmethod
    def from_tree(cls, tree: dict) -> "Box":
        return cls(tree["lo"], tree["hi"])

    @classmethod
    def abstract_tree(cls, params_like: Params, rank: int) -> dict:
        return {"lo": params_like, "hi": params_like}

    @classmethod
    def initial_theta(cls, problem) -> dict:
        """Log half-widths below and above the params, all at ``config.init_log_radius``."""
        log_radius = jax.tree.map(lambda p: jnp.full_like(p, problem.config.init_log_radius), problem.params)
        return {"log_lo": log_radius, "log_hi": log_radius}

    @classmethod
    def from_theta(cls, problem, theta: dict) -> "Box":
        """``[p - m exp(a), p + m exp(b)]`` (m: the problem's 0/1 mask of free parameters)."""
        p, m = problem.params, problem.mask
        return cls(jax.tree.map(lambda p, m, a: p - m * jnp.exp(a), p, m, theta["log_lo"]),
                   jax.tree.map(lambda p, m, b: p + m * jnp.exp(b), p, m, theta["log_hi"]))

    @classmethod
    def from_domain(cls, domain: Domain, rank: int) -> "Box":
        return domain.hull()

    def validate(self, params_like: Params | None = None) -> None:
        parts = {"lo": self.lo, "hi": self.hi}
        check_finite(parts)
        check_shapes(parts, self.lo if params_like is None else params_like)
        for (path, lo), (_, hi) in zip(named_leaves(self.lo), named_leaves(self.hi)):
            if (lo > hi).any():
                index = tuple(int(i) for i in np.argwhere(lo > hi)[0])
                raise DomainError(f"domain lo > hi at {path}{list(index)}: {lo[index]} > {hi[index]}")


@jax.jit
def _box_contains(box: Box, params: Params, rtol: float) -> jax.Array:
    """Whether params lie in the box widened by ``rtol`` times its largest coordinate (one call)."""
    scale = jnp.max(jnp.stack([jnp.abs(x).max() for x in jax.tree.leaves(box.lo) + jax.tree.leaves(box.hi)]))
    slack = rtol * scale
    return jnp.all(jnp.stack([((lo - slack) <= p).all() & (p <= (hi + slack)).all() for p, lo, hi in
                              zip(jax.tree.leaves(params), jax.tree.leaves(box.lo), jax.tree.leaves(box.hi))]))


@jax.jit
def box_around(params: Params, radius: Params | float = 0.0) -> Box:
    """The box ``params +- radius`` (a zero-size box by default)."""
    if not isinstance(radius, dict):
        radius = jax.tree.map(lambda p: jnp.full_like(p, radius), params)
    return Box(jax.tree.map(lambda p, r: p - r, params, radius), jax.tree.map(lambda p, r: p + r, params, radius))
