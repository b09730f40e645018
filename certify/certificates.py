"""Certificates: certified accuracy over a domain, its smooth surrogate, and finite-sample bounds.

A sample is *certified* when its margin lower bound (:func:`certify.bounds.output_bounds`) exceeds
``margin_tol`` (a small slack for floating-point rounding in the bound itself): then every
parameter vector in the domain classifies it correctly. Certified accuracy is the certified
fraction; held-out certification samples turn it into a Clopper-Pearson lower confidence bound on
the rate over the data distribution.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import betaincinv

from certify.bounds import output_bounds
from certify.domains import Domain, box_around
from metaedit import executables, nets


class CertificateError(ValueError):
    """A certificate cannot be stated as asked (tau outside (0, 1], empty data, ...)."""


def default_margin_tol(dtype, given: float | None = None) -> float:
    """Rounding slack for a certificate: ``given``, or by default 1e-4 in float32 and 1e-9 in float64."""
    if given is not None:
        return given
    return 1e-9 if jnp.dtype(dtype) == jnp.float64 else 1e-4


class Constraint(NamedTuple):
    """``certified_accuracy(domain, x, y) >= tau``; x [n, *input_shape], y [n]. ``weight`` [n] (optional)
    reweights samples (e.g. 1 / class frequency for a balanced accuracy). ``competitors`` [C] bool
    (optional): the logits a sample must beat, for this constraint's samples and its held-out ones
    (a task-incremental task's own classes); None: all."""

    x: jax.Array
    y: jax.Array
    tau: float
    weight: jax.Array | None = None
    competitors: jax.Array | None = None


def certified(spec: nets.Spec, domain: Domain, x: jax.Array, y: jax.Array, margin_tol: float | None = None,
              bound: str = "interval", competitors: jax.Array | None = None) -> jax.Array:
    """[n] bool: the samples certified over ``domain`` by the ``bound`` kind (:data:`certify.bounds.BOUNDS`),
    against the ``competitors`` logits ([C] bool; None: all)."""
    tol = default_margin_tol(x.dtype, margin_tol)
    return _certified(spec, domain, x, y, tol, bound, competitors)


@executables.jit(static_argnames=("spec", "tol", "bound"))
def _certified(spec, domain, x, y, tol, bound, competitors):
    return output_bounds(spec, domain, x, y, bound, competitors=competitors).margin_lo > tol


def weighted_mean(values: jax.Array, weight: jax.Array | None) -> jax.Array:
    """Mean of [n] values, weighted by [n] weights when given."""
    if weight is None:
        return values.mean()
    return (values * weight).sum() / weight.sum()


def point_certified_accuracy(spec: nets.Spec, params, x, y, margin_tol: float | None = None,
                             competitors: jax.Array | None = None) -> float:
    """The certified accuracy of the zero-size domain at ``params``: the fraction of (x, y) the
    network itself classifies correctly with a margin above the rounding tolerance."""
    return float(certified_accuracy(spec, box_around(params), x, y, margin_tol=margin_tol, competitors=competitors))


def certified_accuracy(spec: nets.Spec, domain: Domain, x, y, weight=None, margin_tol: float | None = None,
                       bound: str = "interval", competitors: jax.Array | None = None) -> jax.Array:
    """The (weighted) fraction of certified samples: a hard, piecewise-constant number."""
    tol = default_margin_tol(x.dtype, margin_tol)
    return _certified_accuracy(spec, domain, x, y, weight, tol, bound, competitors)


@executables.jit(static_argnames=("spec", "tol", "bound"))
def _certified_accuracy(spec, domain, x, y, weight, tol, bound, competitors):
    return weighted_mean(_certified(spec, domain, x, y, tol, bound, competitors).astype(x.dtype), weight)


def soft_and_hard_accuracy(spec: nets.Spec, domain: Domain, constraint: "Constraint", temperature: float = 0.1,
                           margin_tol: float | None = None, leak: float = 0.0,
                           keep_pulling: jax.Array | None = None,
                           bound: str = "interval") -> tuple[jax.Array, jax.Array]:
    """The constraint's (weighted) certified accuracy, smooth and hard, from one bound propagation.

    Smooth: the mean of ``sigmoid(m) + leak * min(m, 0) * keep_pulling`` with ``m = (margin_lo -
    tol) / temperature``; ``keep_pulling`` [n] (0/1) marks the samples a lost margin should keep
    pulling back (a plain sigmoid saturates). Hard: the fraction with ``margin_lo > tol``.
    """
    tol = default_margin_tol(constraint.x.dtype, margin_tol)
    margin = output_bounds(spec, domain, constraint.x, constraint.y, bound, competitors=constraint.competitors).margin_lo
    scaled = (margin - tol) / temperature
    soft = jax.nn.sigmoid(scaled)
    if keep_pulling is not None:
        soft = soft + leak * jnp.minimum(scaled, 0.0) * keep_pulling
    return (weighted_mean(soft, constraint.weight),
            weighted_mean((margin > tol).astype(margin.dtype), constraint.weight))


def per_class_certified_accuracy(spec, domain, x, y, num_classes: int, margin_tol=None,
                                 bound: str = "interval") -> np.ndarray:
    """[num_classes] certified accuracy within each class (NaN for a class with no samples)."""
    hits = np.asarray(certified(spec, domain, x, y, margin_tol, bound))
    y = np.asarray(y)
    return np.array([hits[y == c].mean() if (y == c).any() else np.nan for c in range(num_classes)])


def clopper_pearson_lower(successes: int, trials: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson lower bound on a success rate from ``successes`` of ``trials``."""
    if trials <= 0:
        raise CertificateError("the Clopper-Pearson bound needs at least one held-out sample")
    if not 0 < confidence < 1:
        raise CertificateError(f"confidence must lie in (0, 1), got {confidence}")
    if successes <= 0:
        return 0.0
    return float(betaincinv(successes, trials - successes + 1, 1 - confidence))  # the Beta quantile


class Certificate(NamedTuple):
    """What a certificate reports for one constraint. ``holds``: with the ``samples`` guarantee,
    the certified accuracy on the constraint's samples is >= tau; with ``distribution``, the
    held-out lower bound is >= tau (:mod:`certify.guarantee`)."""

    tau: float
    certified_accuracy: float
    heldout_certified_accuracy: float
    heldout_samples: int
    lower_bound: float
    confidence: float
    holds: bool
    guarantee: str = "samples"


def certificate(spec: nets.Spec, domain: Domain, constraint: Constraint, heldout_x, heldout_y,
                confidence: float = 0.95, margin_tol: float | None = None, bound: str = "interval") -> Certificate:
    """Certified accuracy on the constraint's samples and the held-out Clopper-Pearson lower bound."""
    cert = float(certified_accuracy(spec, domain, constraint.x, constraint.y, constraint.weight, margin_tol, bound,
                                    constraint.competitors))
    hits = np.asarray(certified(spec, domain, heldout_x, heldout_y, margin_tol, bound, constraint.competitors))
    return Certificate(
        tau=float(constraint.tau), certified_accuracy=cert,
        heldout_certified_accuracy=float(hits.mean()) if len(hits) else float("nan"),
        heldout_samples=int(len(hits)),
        lower_bound=clopper_pearson_lower(int(hits.sum()), int(len(hits)), confidence),
        confidence=confidence, holds=cert >= constraint.tau,
    )


def check_constraints(constraints: Sequence[Constraint]) -> None:
    """Raises :class:`CertificateError` for an empty constraint list, a tau outside (0, 1] or empty data."""
    if not constraints:
        raise CertificateError("at least one constraint is needed")
    for i, c in enumerate(constraints):
        if not 0 < float(c.tau) <= 1:
            raise CertificateError(f"constraint {i}: tau must lie in (0, 1], got {c.tau}")
        if len(c.y) == 0:
            raise CertificateError(f"constraint {i} has no samples")
        if c.x.shape[0] != c.y.shape[0]:
            raise CertificateError(f"constraint {i}: {c.x.shape[0]} inputs but {c.y.shape[0]} labels")
