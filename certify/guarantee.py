"""Guarantees about the data: a certified LID whose certified accuracy on *new* samples is >= tau.

Three sets of rows play three parts. The **certification** rows shape the domain (the solver and
the shrinking of its candidates see only them). The **held-out** rows never shape it: they only
decide how far the chosen domain may be scaled towards the network, by **fixed-sequence testing**
over a grid of scales fixed in advance (smallest first): scale ``s_k`` passes when the one-sided
Clopper-Pearson lower bound of its held-out certified accuracy is >= tau, and the largest scale
before the first failure is kept. Each test runs at the full level ``1 - confidence`` and the
family-wise error is still at most ``1 - confidence`` (the hypotheses are tested in an order fixed
before the data is seen and testing stops at the first failure), so with probability at least
``confidence`` the returned domain classifies a new sample correctly, for *every* parameter
vector in it, with probability >= tau. (A bound that certifies fewer samples only lowers the
count, so the statement holds for any sound bound, the linear relaxation included.)

Parameters that no certification sample exercises (a first-layer weight whose input is zero on
every certification row, such as a one-hot column absent from them) carry no information about the
data; left free they would grow to the width cap and make the domain look larger than what was
learnt. They are **frozen** (zero width) by design and counted apart (:func:`unexercised_mask`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from certify import certificates
from certify.certificates import CertificateError
from certify.domains import Domain
from metaedit import executables, nets

Params = Any

GUARANTEES = ("distribution", "samples")
"""``distribution``: the held-out Clopper-Pearson bound is >= tau (the default); ``samples``: the
certified accuracy on the certification samples is >= tau (the held-out bound is reported only)."""


def check_guarantee(guarantee: str, confidence: float) -> None:
    """Raises :class:`CertificateError` for an unknown guarantee or a confidence outside (0, 1)."""
    if guarantee not in GUARANTEES:
        raise CertificateError(f"guarantee must be {' or '.join(map(repr, GUARANTEES))}, got {guarantee!r}")
    if not 0 < confidence < 1:
        raise CertificateError(f"confidence must lie in (0, 1), got {confidence}")


def default_scales() -> np.ndarray:
    """The scales tested, smallest first: ``2 ** (k / 2)`` for k = -16 .. -7 (1/256 to 1/11, 41% apart),
    then ``2 ** (k / 16)`` for k = -48 .. 16 (1/8 to 2, 4% apart): 75 scales."""
    return np.concatenate([2.0 ** (np.arange(-16, -6) / 2), 2.0 ** (np.arange(-48, 17) / 16)])


def needed_rate(tau: float, heldout: int, confidence: float) -> float:
    """The smallest held-out certified fraction whose Clopper-Pearson lower bound reaches tau
    (above 1 when ``heldout`` rows cannot reach tau at all)."""
    for hits in range(math.ceil(tau * heldout), heldout + 1):
        if hits and certificates.clopper_pearson_lower(hits, heldout, confidence) >= tau:
            return hits / heldout
    return math.inf


def solve_target(tau: float, heldout: int, confidence: float, margin: float, reachable: float) -> float:
    """The certified accuracy the solver aims at on the certification rows: the held-out rate that
    reaches tau at this confidence, plus ``margin`` (the rows' sampling spread), at most ``reachable``
    (the network's own certified accuracy on them)."""
    return float(min(needed_rate(tau, heldout, confidence) + margin, reachable))


class ScaleTest(NamedTuple):
    """What :func:`fixed_sequence` returns: the kept scale (None when even the smallest fails), its
    held-out certified count and bound, and every scale tested with its bound."""

    scale: float | None
    hits: int
    lower_bound: float
    tested: list[tuple[float, float]]


def fixed_sequence_test(hits_at: Callable[[float], int], trials: int, scales: np.ndarray, tau: float,
                        confidence: float) -> ScaleTest:
    """Fixed-sequence testing: ``hits_at(s)`` successes of ``trials`` at each scale s of ``scales``
    (ascending, fixed in advance); keep the largest scale before the first whose Clopper-Pearson lower
    bound at ``confidence`` is below tau."""
    scales = np.asarray(scales, float)
    if scales.ndim != 1 or not len(scales) or (np.diff(scales) <= 0).any():
        raise CertificateError("the scales of a fixed sequence must be a non-empty increasing sequence")
    kept, tested, hits_kept, bound_kept = None, [], 0, 0.0
    for scale in scales:
        hits = int(hits_at(float(scale)))
        lower = certificates.clopper_pearson_lower(hits, trials, confidence)
        tested.append((float(scale), lower))
        if lower < tau:
            break
        kept, hits_kept, bound_kept = float(scale), hits, lower
    return ScaleTest(kept, hits_kept, bound_kept, tested)


def fixed_sequence(spec: nets.Spec, domain: Domain, point: Params, x: jax.Array, y: jax.Array, tau: float,
                   confidence: float, bound: str, margin_tol: float | None,
                   scales: np.ndarray | None = None) -> ScaleTest:
    """:func:`fixed_sequence_test` of ``point + s (domain - point)`` on the held-out rows x [n, ...],
    y [n] over ``scales`` (default :func:`default_scales`)."""
    scales = default_scales() if scales is None else np.asarray(scales, float)
    counted: dict[float, int] = {}

    def hits_at(scale: float) -> int:
        if scale not in counted:  # the next CHUNK scales in one call (the test stops at the first failure)
            start = int(np.searchsorted(scales, scale))
            chunk = scales[start:start + CHUNK]
            padded = np.concatenate([chunk, np.full(CHUNK - len(chunk), chunk[-1])])
            hits = np.asarray(_hits_by_scale(spec, domain, point, x, y, jnp.asarray(padded, x.dtype), margin_tol,
                                             bound))
            counted.update(zip(chunk.tolist(), hits[:len(chunk)].tolist()))
        return counted[scale]
    return fixed_sequence_test(hits_at, len(y), scales, tau, confidence)


CHUNK = 25
"""Scales counted per call by :func:`fixed_sequence`."""


@executables.jit(static_argnames=("spec", "margin_tol", "bound"))
def _hits_by_scale(spec, domain, point, x, y, scales, margin_tol, bound):
    """[K] certified counts of the domain scaled towards ``point`` by each of ``scales`` [K], in one call
    (all of them are computed; the test still stops at the first failure)."""
    return jax.vmap(lambda s: certificates.certified(spec, domain.scaled(point, s), x, y, margin_tol, bound).sum())(
        scales)


def unexercised_mask(spec: nets.Spec, params: Params, x: jax.Array) -> tuple[Params, int]:
    """(mask, count): a params-shaped 0/1 mask that is 0 on the first layer's kernel entries whose
    input is zero on every row of x [n, ...] (they never touch these rows), and how many there are."""
    mask, count = _unexercised_mask(spec, params, x)
    return mask, int(count)


@executables.jit(static_argnames="spec")
def _unexercised_mask(spec, params, x):
    first = nets.layers(spec)[0]
    inputs = jnp.abs(x.reshape(x.shape[0], -1) if isinstance(spec, nets.MLPSpec) else x)
    kernel = params[first.name]["kernel"]
    op = nets.linear_map(first)
    use = jax.grad(lambda w: op(inputs, w).sum())(jnp.zeros_like(kernel))  # sum of |input| each weight multiplies
    mask = jax.tree.map(jnp.ones_like, params)
    mask[first.name] = {**mask[first.name], "kernel": (use > 0).astype(kernel.dtype)}
    return mask, (use <= 0).sum()
