"""The domain interface: a region of parameter space over a params pytree.

A domain is ``center + radius * e + sum_k z_k generators[k]`` with ``e`` (one symbol per
parameter) and ``z`` (``rank`` shared symbols) in ``[-1, 1]``: a box is the case ``rank == 0``.
Every domain kind implements :class:`Domain` (and is registered in :data:`certify.domains.DOMAINS`),
so the bounds, the solver, projection and storage never branch on the kind. Domains are pytrees
(frozen dataclasses registered with ``jax.tree_util.register_dataclass``, :func:`pytree_dataclass`):
they pass through ``jit``, ``vmap`` and ``grad``.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

Params = Any


class DomainError(ValueError):
    """A domain is malformed (lo > hi, non-finite, generators of the wrong shape, ...)."""


def flat(tree: Params) -> jax.Array:
    """Every leaf of ``tree`` flattened and concatenated: [n]."""
    return jnp.concatenate([leaf.reshape(-1) for leaf in jax.tree.leaves(tree)])


def unflat(vector: jax.Array, like: Params) -> Params:
    """The inverse of :func:`flat`: ``vector`` [n] cut into leaves shaped like ``like``."""
    leaves, treedef = jax.tree.flatten(like)
    out, start = [], 0
    for leaf in leaves:
        size = int(np.prod(leaf.shape))
        out.append(vector[start:start + size].reshape(leaf.shape))
        start += size
    return jax.tree.unflatten(treedef, out)


def named_leaves(tree: Params) -> list[tuple[str, np.ndarray]]:
    """``(path, value)`` of every leaf, as host arrays (for checks and messages)."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(jax.tree_util.keystr(p), np.asarray(v)) for p, v in leaves]


def check_finite(parts: dict[str, Params]) -> None:
    """Raises :class:`DomainError` naming the first part and leaf that holds NaN or Inf."""
    for part, tree in parts.items():
        for path, value in named_leaves(tree):
            if not np.isfinite(value).all():
                raise DomainError(f"domain {part}{path} holds NaN or Inf")


def check_shapes(parts: dict[str, Params], reference: Params, stacked: tuple[str, ...] = ()) -> None:
    """Raises :class:`DomainError` unless every part has the leaves and shapes of ``reference``
    (parts in ``stacked`` with one extra leading axis)."""
    ref_shapes = {path: v.shape for path, v in named_leaves(reference)}
    for part, tree in parts.items():
        shapes = {path: v.shape for path, v in named_leaves(tree)}
        if set(shapes) != set(ref_shapes):
            raise DomainError(f"domain {part} has leaves {sorted(shapes)}; expected {sorted(ref_shapes)}")
        for path, shape in shapes.items():
            want = ref_shapes[path]
            if part in stacked and shape[1:] != want:
                raise DomainError(f"domain {part}{path} has shape {shape}; expected [r, {', '.join(map(str, want))}]")
            if part not in stacked and shape != want:
                raise DomainError(f"domain {part}{path} has shape {shape}; expected {want}")


def pytree_dataclass(cls: type) -> type:
    """``cls`` as a frozen dataclass registered as a JAX pytree: its fields are leaves, except those
    declared ``dataclasses.field(metadata={"static": True})``, which are part of the tree's structure
    (static under ``jit``). jax's own registration: ``flax.struct`` would cost the command line 0.1 s
    of imports."""
    return jax.tree_util.register_dataclass(dataclasses.dataclass(frozen=True)(cls))


class Domain(abc.ABC):
    """A region of parameter space. ``kind`` names the class in the registry; ``center`` and
    ``radius`` are params-shaped pytrees (fields or properties); ``rank`` is the number of shared
    symbols (0 for a box). Subclasses are :func:`pytree_dataclass` classes."""

    kind: ClassVar[str]
    center: Params  # the centre, a params-shaped pytree
    radius: Params  # the axis-aligned half-widths (>= 0), a params-shaped pytree

    def replace(self, **changes) -> "Domain":
        """A copy with the named fields changed."""
        return dataclasses.replace(self, **changes)

    @property
    def rank(self) -> int:
        """The number of shared symbols (generators); a static Python int."""
        return 0

    @abc.abstractmethod
    def hull(self) -> "Domain":
        """The smallest box holding the domain (a box returns itself)."""

    @abc.abstractmethod
    def as_zonotope(self, rank: int | None = None) -> "Domain":
        """The same set as a zonotope (a box gets ``rank`` zero generators; default 0)."""

    @abc.abstractmethod
    def log_volume(self, weights: Params | None = None) -> jax.Array:
        """Log-volume (a box) or a lower bound on it; zero-width parameters are left out, and
        ``weights`` (params-shaped, >= 0) weight each parameter's log-width."""

    @abc.abstractmethod
    def contains(self, params: Params, rtol: float = 0.0) -> bool:
        """Whether ``params`` lie inside, up to ``rtol`` times the domain's largest coordinate (host)."""

    @abc.abstractmethod
    def project(self, params: Params) -> Params:
        """The nearest point of the domain (points inside come back unchanged). Traceable."""

    @abc.abstractmethod
    def scaled(self, point: Params, scale: float) -> "Domain":
        """``point + scale * (domain - point)``: the domain shrunk towards a point inside it."""

    @abc.abstractmethod
    def to_tree(self) -> dict:
        """The arrays that describe the domain, by name (for storage)."""

    @classmethod
    @abc.abstractmethod
    def from_tree(cls, tree: dict) -> "Domain":
        """The domain :meth:`to_tree` described."""

    @classmethod
    @abc.abstractmethod
    def abstract_tree(cls, params_like: Params, rank: int) -> dict:
        """The shapes of :meth:`to_tree` for parameters like ``params_like`` (for restoring)."""

    # ---------------------------------------------------------------- the LID solver's parametrisation

    @classmethod
    @abc.abstractmethod
    def initial_theta(cls, problem: Any) -> dict:
        """The solver's free variables for a tiny domain around ``problem.params`` (see
        :class:`certify.solver.LIDProblem`: params, center, mask, start, config)."""

    @classmethod
    @abc.abstractmethod
    def from_theta(cls, problem: Any, theta: dict) -> "Domain":
        """The domain the free variables ``theta`` describe; it always contains ``problem.params``."""

    @classmethod
    @abc.abstractmethod
    def from_domain(cls, domain: "Domain", rank: int) -> "Domain":
        """``domain`` as this kind (with ``rank`` shared generators where the kind has them)."""

    @abc.abstractmethod
    def validate(self, params_like: Params | None = None) -> None:
        """Raises :class:`DomainError` naming the first problem (checks concrete values, not under jit)."""

    # ---------------------------------------------------------------- shared by every kind

    @jax.jit
    def num_free(self) -> jax.Array:
        """Number of parameters with a positive axis width."""
        return sum((r > 0).sum() for r in jax.tree.leaves(self.radius))

    @jax.jit
    def mean_log_width(self) -> jax.Array:
        """``log_volume / num_free``: a size comparable across networks of different sizes."""
        return self.log_volume() / jnp.maximum(self.num_free(), 1)

    def generator_log_lengths(self) -> jax.Array:
        """``sum_k log ||G_k||`` over the shared generators (0 for a box): the solver's size bonus."""
        if not self.rank:
            return jnp.zeros(())
        generators = jax.tree.leaves(self.as_zonotope().generators)
        lengths = jnp.sqrt(sum((g.reshape(g.shape[0], -1) ** 2).sum(1) for g in generators))
        return jnp.log(jnp.maximum(lengths, 1e-30)).sum()

    def sample(self, key: jax.Array, count: int, corners: bool = False) -> Params:
        """``count`` parameter vectors inside (stacked ``[count, ...]``): uniform in the symbols
        ``e`` and ``z``, or with ``corners`` every symbol +-1 (vertices, where bounds are tightest)."""
        return _sample(self.as_zonotope(), key, count, corners)


@functools.partial(jax.jit, static_argnames=("count", "corners"))
def _sample(domain: Domain, key: jax.Array, count: int, corners: bool) -> Params:
    leaves, treedef = jax.tree.flatten(domain.radius)
    sizes = [int(np.prod(leaf.shape)) for leaf in leaves]
    dtype = leaves[0].dtype
    shape = (count, sum(sizes) + domain.rank)  # one draw for every symbol: e (per parameter), then z
    if corners:
        draws = jax.random.rademacher(key, shape, jnp.int32).astype(dtype)
    else:
        draws = jax.random.uniform(key, shape, dtype, minval=-1.0, maxval=1.0)
    bounds = np.cumsum([0] + sizes)
    e = jax.tree.unflatten(treedef, [draws[:, a:b].reshape((count,) + leaf.shape)
                                     for a, b, leaf in zip(bounds[:-1], bounds[1:], leaves)])
    points = jax.tree.map(lambda c, r, s: c + r * s, domain.center, domain.radius, e)
    if not domain.rank:
        return points
    z = draws[:, bounds[-1]:]
    return jax.tree.map(lambda p, g: p + jnp.tensordot(z, g, axes=(1, 0)), points, domain.generators)


def log_widths(radius: Params, weights: Params | None, floor: float = 1e-30) -> jax.Array:
    """``sum_i w_i log(2 r_i)`` over the parameters with ``r_i > 0`` (frozen ones left out)."""
    weights = jax.tree.map(jnp.ones_like, radius) if weights is None else weights
    terms = jax.tree.map(lambda r, w: jnp.where(r > 0, w * jnp.log(jnp.maximum(2 * r, floor)), 0.0), radius, weights)
    return sum(t.sum() for t in jax.tree.leaves(terms))
