"""Auditing a certified domain by running the real network: sampling and a per-sample attack.

Neither proves anything; both can only find a counterexample. A certified sample that some
parameter vector of the domain misclassifies would show a bound to be unsound.

* :func:`sampled_violations`: ``count`` parameter vectors drawn in the domain (uniform in its
  symbols, and as many vertices, where bounds are tightest), in chunks.
* :func:`attacked_margins`: for *each* sample its own projected gradient descent on the margin
  ``logit_y - max_{k != y} logit_k`` over the domain, in the domain's symbols ``e, z in [-1, 1]``
  (so the projection is a clip for boxes and zonotopes alike), from the centre and from a random
  vertex; the smallest margin met is returned.
* :func:`audit_certified`: both, on the certified rows of a data set.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from certify import bounds
from certify.domains import Domain
from metaedit import nets


def _margins(spec, params, x, y, competitors=None):
    """[B] logit_y - max_{k != y} logit_k of one network (k among ``competitors`` [C] bool when given)."""
    return bounds.margins(nets.apply(spec, params, x), y, competitors)


@functools.partial(jax.jit, static_argnames="spec")
def _wrong(spec, stacked, x, y, competitors):
    """[B] whether any of the stacked parameter vectors [P, ...] misclassifies each sample."""
    return (jax.vmap(lambda p: _margins(spec, p, x, y, competitors))(stacked) <= 0).any(axis=0)


def sampled_violations(spec: nets.Spec, domain: Domain, x: jax.Array, y: jax.Array, count: int, key: jax.Array,
                       chunk: int = 512, competitors: jax.Array | None = None) -> jax.Array:
    """[B] bool: the samples x [B, ...] (labels y [B]) that some sampled parameter vector misclassifies,
    over ``count`` uniform draws and ``count`` vertices of ``domain`` (among the ``competitors``
    logits [C] bool when given)."""
    wrong = jnp.zeros(x.shape[0], bool)
    for start in range(0, count, chunk):
        size = min(chunk, count - start)
        for corners in (False, True):
            stacked = domain.sample(jax.random.fold_in(key, 2 * start + corners), size, corners=corners)
            wrong = wrong | _wrong(spec, stacked, x, y, competitors)
    return wrong


def _point(zonotope, e, z):
    """The parameters at symbols e (params-shaped) and z [r]."""
    points = jax.tree.map(lambda c, r, s: c + r * s, zonotope.center, zonotope.radius, e)
    if not zonotope.rank:
        return points
    return jax.tree.map(lambda p, g: p + jnp.tensordot(z, g, axes=(0, 0)), points, zonotope.generators)


def _attack_one(spec, zonotope, x, y, key, steps, competitors):
    """The smallest margin of one sample (x [...], y []) found by signed projected gradient descent."""
    def margin(symbols):
        return _margins(spec, _point(zonotope, *symbols), x[None], y[None], competitors)[0]

    def descend(symbols):
        def body(carry, step):
            symbols, best = carry
            value, grad = jax.value_and_grad(margin)(symbols)
            size = 0.5 * (1 - step / steps) + 0.02
            symbols = jax.tree.map(lambda s, g: jnp.clip(s - size * jnp.sign(g), -1.0, 1.0), symbols, grad)
            return (symbols, jnp.minimum(best, value)), None
        (symbols, best), _ = jax.lax.scan(body, (symbols, jnp.inf), jnp.arange(steps, dtype=x.dtype))
        return jnp.minimum(best, margin(symbols))

    zeros = (jax.tree.map(jnp.zeros_like, zonotope.center), jnp.zeros(zonotope.rank, x.dtype))
    leaves, treedef = jax.tree.flatten(zonotope.center)
    keys = jax.random.split(key, len(leaves) + 1)
    vertex = (jax.tree.unflatten(treedef, [jax.random.rademacher(k, l.shape, jnp.int32).astype(l.dtype)
                                           for k, l in zip(keys, leaves)]),
              jax.random.rademacher(keys[-1], (zonotope.rank,), jnp.int32).astype(x.dtype))
    return jnp.minimum(descend(zeros), descend(vertex))


def attacked_margins(spec: nets.Spec, domain: Domain, x: jax.Array, y: jax.Array, key: jax.Array,
                     steps: int = 40, chunk: int = 256, competitors: jax.Array | None = None) -> jax.Array:
    """[B] the smallest margin that a per-sample attack finds in ``domain`` for each of x [B, ...], y [B]
    (against the ``competitors`` logits [C] bool when given)."""
    zonotope = domain.as_zonotope()
    keys = jax.random.split(key, x.shape[0])
    return jnp.concatenate([_attack(spec, zonotope, x[i:i + chunk], y[i:i + chunk], keys[i:i + chunk], steps,
                                    competitors) for i in range(0, x.shape[0], chunk)])


@functools.partial(jax.jit, static_argnames=("spec", "steps"))
def _attack(spec, zonotope, x, y, keys, steps, competitors):
    return jax.vmap(lambda xi, yi, k: _attack_one(spec, zonotope, xi, yi, k, steps, competitors))(x, y, keys)


class Audit(NamedTuple):
    """What :func:`audit_certified` found: certified rows misclassified by a sampled parameter vector,
    rows attacked, attacked rows misclassified, and the smallest margin the attack met."""

    sampled_violations: int
    attacked_rows: int
    attack_violations: int
    smallest_attacked_margin: float

    @property
    def violations(self) -> int:
        return self.sampled_violations + self.attack_violations


def audit_certified(spec: nets.Spec, domain: Domain, x: jax.Array, y: jax.Array, certified: np.ndarray,
                    samples: int, sample_key: jax.Array, attack_key: jax.Array, attack_steps: int = 40,
                    attack_rows: int | None = None) -> Audit:
    """Looks for a counterexample among the rows of x [B, ...], y [B] marked ``certified`` [B]:
    ``samples`` uniform parameter vectors and ``samples`` vertices of ``domain``
    (:func:`sampled_violations`), and the attack (:func:`attacked_margins`) on the first
    ``attack_rows`` of them (all by default)."""
    rows = np.flatnonzero(np.asarray(certified))
    wrong = np.asarray(sampled_violations(spec, domain, x[rows], y[rows], samples, sample_key))
    attacked = rows[:attack_rows]
    margins = np.asarray(attacked_margins(spec, domain, x[attacked], y[attacked], attack_key, attack_steps))
    return Audit(int(wrong.sum()), len(attacked), int((margins <= 0).sum()),
                 float(margins.min()) if len(margins) else float("inf"))
