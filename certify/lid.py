"""Certified LIDs: the solver's candidates made exact, and one entry point per job.

* :func:`certify_lids`: the starting domain, every snapshot and the final domain of a solve, each
  shrunk towards the params (bisection on a scale) until every constraint's *hard* certified
  accuracy holds, then reported with its held-out Clopper-Pearson bound.
* :func:`compute` (constraints -> certified LIDs): solve and certify, a :class:`LIDResult`.
* :func:`for_network` (a network and a data set -> certified LIDs for ``accuracy >= tau``):
  certification and held-out samples drawn from the test split; a zonotope is solved from the best
  box LID (so it starts as that box and is kept only where it certifies something larger); a
  :class:`NetworkLIDs`.

The solver itself (:func:`solve`, pure and differentiable) lives in :mod:`certify.solver`.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from certify import certificates
from certify.certificates import Certificate, CertificateError, Constraint
from certify.domains import Domain, box_around
from certify.solver import (LIDConfig, LIDError, LIDProblem, LIDState, domain_of, make_problem, size, solve,
                            solve_fastest, start_domain)
from metaedit import nets
from metaedit.datasets import Dataset

Params = Any

__all__ = ["LID", "LIDResult", "NetworkLIDs", "LIDConfig", "LIDError", "LIDProblem", "LIDState", "best",
           "certify_lids", "compute", "for_network", "certification_rows", "make_problem", "solve", "size",
           "domain_of"]


class LID(NamedTuple):
    """A certified locally invariant domain: the domain, its per-constraint certificates, its
    log-volume (bound), the solver step it came from and the scale it was shrunk by (1 = none)."""

    domain: Domain
    certificates: tuple[Certificate, ...]
    log_volume: float
    step: int
    scale: float


class LIDResult(NamedTuple):
    """What :func:`compute` returns: the certified LIDs (the start, every snapshot, the final
    domain) and the solver's final state."""

    lids: list[LID]
    state: LIDState

    @property
    def best(self) -> LID:
        return best(self.lids)


@functools.partial(jax.jit, static_argnames=("spec", "margin_tol"))
def _hard_accuracies(spec, domain, xs, ys, weights, margin_tol):
    return jnp.stack([certificates.certified_accuracy(spec, domain, x, y, w, margin_tol)
                      for x, y, w in zip(xs, ys, weights)])


def certify_lids(problem: LIDProblem, state: LIDState, constraints: Sequence[Constraint],
                 heldout: Sequence[tuple[Any, Any]], confidence: float = 0.95, bisection_steps: int = 14) -> list[LID]:
    """Certified LIDs from the starting domain, every snapshot and the final domain (host side).

    Each candidate is shrunk towards the params until every constraint's hard certified accuracy
    on its own samples is >= tau; ``heldout[c] = (x, y)`` gives constraint c's Clopper-Pearson bound.
    """
    constraints = tuple(constraints)
    if len(heldout) != len(constraints):
        raise LIDError(f"{len(constraints)} constraints but {len(heldout)} held-out sets")
    tol = problem.config.margin_tol
    xs, ys = tuple(k.x for k in constraints), tuple(k.y for k in constraints)
    weights = tuple(k.weight for k in constraints)
    taus = np.array([float(k.tau) for k in constraints])

    def holds(domain):
        return bool((np.asarray(_hard_accuracies(problem.spec, domain, xs, ys, weights, tol)) >= taus).all())

    point = box_around(problem.params)
    if not holds(point):
        reached = np.asarray(_hard_accuracies(problem.spec, point, xs, ys, weights, tol))
        raise LIDError(
            f"the network itself certifies only {np.round(reached, 4).tolist()} of the constraint samples "
            f"(margin > tolerance) against tau {taus.tolist()}: lower tau"
        )
    candidates = [(0, start_domain(problem))] + [
        (int((k + 1) * problem.config.snapshot_every - 1),
         domain_of(problem, jax.tree.map(lambda s, k=k: s[k], state.snapshots)))
        for k in range(problem.config.num_snapshots)]
    candidates.append((int(state.step), domain_of(problem, state.theta)))
    lids = []
    for step, domain in candidates:
        scale = 1.0
        if not holds(domain):
            low, high = 0.0, 1.0
            for _ in range(bisection_steps):
                middle = (low + high) / 2
                low, high = (middle, high) if holds(domain.scaled(problem.params, middle)) else (low, middle)
            scale = low
            domain = domain.scaled(problem.params, scale)
        found = tuple(certificates.certificate(problem.spec, domain, k, hx, hy, confidence, tol)
                      for k, (hx, hy) in zip(constraints, heldout))
        lids.append(LID(domain, found, float(domain.log_volume()), step, scale))
    return lids


def best(lids: Sequence[LID]) -> LID:
    """The largest of several certified LIDs."""
    return max(lids, key=lambda lid: lid.log_volume)


def compute(spec: nets.Spec, params: Params, constraints: Sequence[Constraint],
            heldout: Sequence[tuple[Any, Any]], config: LIDConfig, bias=None, mask=None,
            start: Domain | None = None) -> LIDResult:
    """Solve and certify in one call (the solve compiled the fastest way for the backend)."""
    certificates.check_constraints(constraints)
    problem = make_problem(spec, params, config, bias, mask, start)
    state = solve_fastest(problem, constraints)
    return LIDResult(certify_lids(problem, state, constraints, heldout), state)


def certification_rows(n_test: int, cert_samples: int, heldout_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint seeded rows of the test split: (certification rows, held-out rows)."""
    if cert_samples < 1 or heldout_samples < 1:
        raise CertificateError("cert_samples and heldout_samples must both be >= 1")
    if cert_samples + heldout_samples > n_test:
        raise CertificateError(
            f"{cert_samples} certification + {heldout_samples} held-out samples exceed the {n_test} test rows")
    order = np.random.default_rng([seed, 7]).permutation(n_test)
    return np.sort(order[:cert_samples]), np.sort(order[cert_samples:cert_samples + heldout_samples])


def default_sample_counts(n_test: int, cert_samples: int | None = None,
                          heldout_samples: int | None = None) -> tuple[int, int]:
    """Certification and held-out sample counts for a test split of ``n_test`` rows: by default
    ``min(512, n_test // 3)`` and ``min(2000, the rest)``; given counts are kept as they are."""
    cert = cert_samples if cert_samples is not None else max(1, min(512, n_test // 3))
    heldout = heldout_samples if heldout_samples is not None else max(1, min(2000, n_test - cert))
    return cert, heldout


class NetworkLIDs(NamedTuple):
    """What :func:`for_network` returns: the certified LIDs of the asked kind (``best`` the largest),
    the test-split rows used to certify them and to bound them, the wall time (solve and certify,
    the starting box included), and for a zonotope the box result it started from."""

    lids: list[LID]
    cert_rows: np.ndarray
    heldout_rows: np.ndarray
    seconds: float
    start: LIDResult | None = None
    start_seconds: float | None = None

    @property
    def best(self) -> LID:
        return best(self.lids)


def for_network(spec: nets.Spec, params: Any, dataset: Dataset, tau: float, config: LIDConfig,
                cert_samples: int = 512, heldout_samples: int = 2000, seed: int = 0) -> NetworkLIDs:
    """Certified LIDs of ``config.domain`` for one network with ``certified accuracy >= tau`` on
    ``cert_samples`` rows of the test split, bounded on ``heldout_samples`` other rows."""
    nets.validate_params(spec, params)
    cert_rows, heldout_rows = certification_rows(len(dataset.y_test), cert_samples, heldout_samples, seed)
    x, y = jnp.asarray(dataset.x_test), jnp.asarray(dataset.y_test)
    constraint = Constraint(x[cert_rows], y[cert_rows], float(tau))
    heldout = [(x[heldout_rows], y[heldout_rows])]
    params = jax.tree.map(jnp.asarray, params)
    started = time.perf_counter()
    start, start_seconds = None, None
    if config.domain != "box":
        start = compute(spec, params, [constraint], heldout, dataclasses.replace(config, domain="box"))
        start_seconds = time.perf_counter() - started
    result = compute(spec, params, [constraint], heldout, config, start=None if start is None else start.best.domain)
    return NetworkLIDs(result.lids, cert_rows, heldout_rows, time.perf_counter() - started, start, start_seconds)
