"""Projection onto certified domains, and an optax wrapper that keeps every update inside one.

Each domain kind projects itself (:meth:`certify.domains.Domain.project`: a clip for a box, FISTA
over the shared symbols for a zonotope). This module adds the projection onto the nearest of
several domains and :func:`projected`: any optax transformation followed by projection of the
updated parameters.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import optax

from certify.domains import Domain

Params = Any


def distance(a: Params, b: Params) -> jax.Array:
    """The Euclidean distance between two params pytrees."""
    return jnp.sqrt(sum(((x - y) ** 2).sum() for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))))


def nearest(domains: Sequence[Domain], params: Params) -> tuple[Params, jax.Array]:
    """The projection onto the nearest of several domains and that domain's index (traceable)."""
    if not domains:
        raise ValueError("nearest needs at least one domain")
    candidates = [d.project(params) for d in domains]
    index = jnp.argmin(jnp.stack([distance(c, params) for c in candidates]))
    return jax.tree.map(lambda *leaves: jnp.stack(leaves)[index], *candidates), index


def projected(inner: optax.GradientTransformation, domain: Domain | Sequence[Domain]) -> optax.GradientTransformation:
    """``inner``'s update followed by projection onto ``domain`` (or the nearest of several).

    The returned updates move the parameters to the projected point up to rounding (``p + (q - p)``
    need not equal ``q`` in floating point); where containment must be exact, as for a certificate,
    project the updated parameters themselves (``metaedit.training.make_step(..., project=...)``).
    ``update`` needs ``params``.
    """
    many = not isinstance(domain, Domain)  # one domain, or a sequence of them

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("projected(...).update needs params")
        updates, state = inner.update(updates, state, params)
        target = optax.apply_updates(params, updates)
        target = nearest(domain, target)[0] if many else domain.project(target)
        return jax.tree.map(jnp.subtract, target, params), state

    return optax.GradientTransformation(inner.init, update)
