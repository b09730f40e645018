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
import time
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from certify import certificates, guarantee
from certify.certificates import Certificate, CertificateError, Constraint
from certify.domains import Domain, box_around
from certify.solver import (LIDConfig, LIDError, LIDProblem, LIDState, domain_of, make_problem, size, solve,
                            solve_fastest, start_domain)
from metaedit import executables, nets
from metaedit.datasets import Dataset

Params = Any

__all__ = ["LID", "LIDResult", "NetworkLIDs", "LIDConfig", "LIDError", "LIDProblem", "LIDState", "best", "best_index",
           "certify_lids", "compute", "for_network", "guaranteed", "largest_meeting_target", "certification_rows",
           "make_problem", "solve", "size", "domain_of"]


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


@executables.jit(static_argnames=("spec", "margin_tol", "bound"))
def _hard_accuracies(spec, domain, constraints, margin_tol, bound):
    return jnp.stack([certificates.certified_accuracy(spec, domain, c.x, c.y, c.weight, margin_tol, bound, c.competitors)
                      for c in constraints])


def certify_lids(problem: LIDProblem, state: LIDState, constraints: Sequence[Constraint],
                 heldout: Sequence[tuple[Any, Any]], confidence: float = 0.95, bisection_steps: int = 14) -> list[LID]:
    """Certified LIDs from the starting domain, every snapshot and the final domain (host side).

    Each candidate is shrunk towards the params until every constraint's hard certified accuracy
    on its own samples is >= tau; ``heldout[c] = (x, y)`` gives constraint c's Clopper-Pearson bound.
    """
    constraints = tuple(constraints)
    if len(heldout) != len(constraints):
        raise LIDError(f"{len(constraints)} constraints but {len(heldout)} held-out sets")
    tol, bound = problem.config.margin_tol, problem.config.bound
    taus = np.array([float(k.tau) for k in constraints])

    def holds(domain):
        return bool((np.asarray(_hard_accuracies(problem.spec, domain, constraints, tol, bound)) >= taus).all())

    point = box_around(problem.params)
    if not holds(point):
        reached = np.asarray(_hard_accuracies(problem.spec, point, constraints, tol, bound))
        raise LIDError(
            f"the network itself certifies only {np.round(reached, 4).tolist()} of the constraint samples "
            f"(margin > tolerance) against tau {taus.tolist()}: lower tau"
        )
    candidates = [(0, start_domain(problem))] + [
        (snapshot_step(problem.config, k),
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
        found = tuple(certificates.certificate(problem.spec, domain, k, hx, hy, confidence, tol, bound)
                      for k, (hx, hy) in zip(constraints, heldout))
        lids.append(LID(domain, found, float(domain.log_volume()), step, scale))
    return lids


def snapshot_step(config: LIDConfig, k: int) -> int:
    """The solver step at which snapshot k was taken."""
    return int((k + 1) * config.snapshot_every - 1)


def best(lids: Sequence[LID]) -> LID:
    """The largest of several certified LIDs."""
    return lids[best_index(lids)]


def best_index(lids: Sequence[LID], among: Sequence[int] | None = None) -> int:
    """The index of the largest of several certified LIDs (the first of equals), over ``among`` (default: all)."""
    return max(range(len(lids)) if among is None else among, key=lambda i: lids[i].log_volume)


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


def given_rows(rows: tuple[Any, Any], n_test: int) -> tuple[np.ndarray, np.ndarray]:
    """``rows = (certification rows, held-out rows)`` as index arrays, checked: non-empty, disjoint,
    and indices of the ``n_test`` test rows (a CertificateError otherwise)."""
    cert_rows, heldout_rows = (np.asarray(r, int).reshape(-1) for r in rows)
    if not len(cert_rows) or not len(heldout_rows) or np.intersect1d(cert_rows, heldout_rows).size:
        raise CertificateError("rows must be two non-empty, disjoint sets of test rows")
    everything = np.concatenate([cert_rows, heldout_rows])
    if everything.min() < 0 or everything.max() >= n_test:
        raise CertificateError(f"rows must index the {n_test} test rows; got {everything.min()} .. {everything.max()}")
    return cert_rows, heldout_rows


def default_sample_counts(n_test: int, cert_samples: int | None = None,
                          heldout_samples: int | None = None) -> tuple[int, int]:
    """Certification and held-out sample counts for a test split of ``n_test`` rows: by default as
    many as the data allows, ``min(4096, n_test // 2)`` to certify and the rest held out; given
    counts are kept as they are."""
    cert = cert_samples if cert_samples is not None else max(1, min(4096, n_test // 2))
    heldout = heldout_samples if heldout_samples is not None else max(1, n_test - cert)
    return cert, heldout


class NetworkLIDs(NamedTuple):
    """What :func:`for_network` returns: the certified LIDs of the asked kind (``best`` the largest;
    with the distribution guarantee, the one guaranteed LID), the test-split rows used to certify
    them and to bound them, the wall time (solve and certify, the starting box included), for a
    zonotope the box result it started from, the guarantee and confidence, the certified accuracy
    the solver aimed at on the certification rows, the number of frozen unexercised parameters and
    the held-out scale test (:class:`certify.guarantee.ScaleTest`, distribution guarantee only)."""

    lids: list[LID]
    cert_rows: np.ndarray
    heldout_rows: np.ndarray
    seconds: float
    start: LIDResult | None = None
    start_seconds: float | None = None
    guarantee: str = "samples"
    confidence: float = 0.95
    target: float = float("nan")
    frozen: int = 0
    scale_test: Any = None

    @property
    def best(self) -> LID:
        return best(self.lids)


def largest_meeting_target(problem: LIDProblem, state: LIDState, constraint: Constraint) -> LID:
    """The largest of the solver's snapshots and final domain whose hard certified accuracy on the
    constraint's samples met its tau when taken (the final domain when none did). Uses the
    certification rows only, and shrinks nothing: the held-out scale test does that."""
    final, final_volume, snapshot_volumes = _final_and_snapshot_sizes(problem, state)
    met = float(_hard_accuracies(problem.spec, final, (constraint,), problem.config.margin_tol,
                                 problem.config.bound)[0]) >= constraint.tau
    sizes = {-1: float(final_volume)} if met else {}
    accuracy, volumes = np.asarray(state.snapshot_accuracy)[:, 0], np.asarray(snapshot_volumes)
    sizes.update({k: float(volumes[k]) for k in range(problem.config.num_snapshots) if accuracy[k] >= constraint.tau})
    chosen = max(sizes, key=sizes.get) if sizes else -1
    if chosen == -1:
        return LID(final, (), float(final_volume), int(state.step), 1.0)
    domain = _domain_of(problem, jax.tree.map(lambda s: s[chosen], state.snapshots))
    return LID(domain, (), float(volumes[chosen]), snapshot_step(problem.config, chosen), 1.0)


_domain_of = executables.jit(domain_of)


@executables.jit
def _final_and_snapshot_sizes(problem: LIDProblem, state: LIDState):
    """The final domain, its log-volume, and the log-volume of every snapshot [K] (one call)."""
    final = domain_of(problem, state.theta)
    return final, final.log_volume(), jax.vmap(lambda t: domain_of(problem, t).log_volume())(state.snapshots)


def guaranteed(spec, params, candidate: LID, cert: Constraint, heldout: tuple, tau: float, confidence: float,
               config: LIDConfig) -> tuple[LID, guarantee.ScaleTest]:
    """``candidate`` scaled towards ``params`` (a point inside it) by fixed-sequence testing on the
    held-out rows ``heldout = (x, y)`` (see :mod:`certify.guarantee`); an LIDError when no scale passes."""
    hx, hy = heldout
    test = guarantee.fixed_sequence(spec, candidate.domain, params, hx, hy, tau, confidence, config.bound,
                                    config.margin_tol)
    if test.scale is None:
        raise LIDError(f"no scale of the solved domain keeps the held-out {confidence:.0%} lower bound >= tau {tau} "
                       f"(at scale {test.tested[0][0]:.4g} it is {test.tested[0][1]:.4f}): lower tau, or hold out "
                       f"more rows")
    domain = candidate.domain.scaled(params, test.scale)
    found = certificates.certificate(spec, domain, cert._replace(tau=tau), hx, hy, confidence, config.margin_tol,
                                     config.bound)
    found = found._replace(holds=found.lower_bound >= tau, guarantee="distribution")
    return LID(domain, (found,), float(domain.log_volume()), candidate.step, candidate.scale * test.scale), test


def for_network(spec: nets.Spec, params: Any, dataset: Dataset, tau: float, config: LIDConfig,
                cert_samples: int | None = None, heldout_samples: int | None = None, seed: int = 0,
                guarantee_kind: str = "distribution", confidence: float = 0.95, solve_margin: float = 0.01,
                freeze_unexercised: bool = True, rows: tuple[np.ndarray, np.ndarray] | None = None,
                bias: Params | None = None, fixed: Params | None = None) -> NetworkLIDs:
    """Certified LIDs of ``config.domain`` for one network with certified accuracy >= tau.

    ``guarantee_kind="distribution"`` (the default): the held-out Clopper-Pearson bound at
    ``confidence`` is >= tau (:mod:`certify.guarantee`); the solver aims at the rate that needs on
    the certification rows plus ``solve_margin``. ``"samples"``: the certified accuracy on the
    certification rows is >= tau, and the held-out bound is reported. Rows come from the test split
    (:func:`default_sample_counts`), or are given as ``rows = (certification rows, held-out rows)``
    (disjoint indices of the test split); unexercised first-layer weights are frozen unless
    ``freeze_unexercised`` is False; ``bias`` (params-shaped, >= 0) weights the size objective;
    ``fixed`` (params-shaped, bool) holds more parameters fixed (zero width), e.g. the weights an edit
    zeroed, so that every network in the LID keeps them.
    """
    guarantee.check_guarantee(guarantee_kind, confidence)
    if not 0 < float(tau) <= 1:
        raise CertificateError(f"tau must lie in (0, 1], got {tau}")
    nets.validate_params(spec, params)
    if rows is None:
        cert_samples, heldout_samples = default_sample_counts(len(dataset.y_test), cert_samples, heldout_samples)
        cert_rows, heldout_rows = certification_rows(len(dataset.y_test), cert_samples, heldout_samples, seed)
    else:
        cert_rows, heldout_rows = given_rows(rows, len(dataset.y_test))
    x_np, y_np = np.asarray(dataset.x_test), np.asarray(dataset.y_test)
    # device_put, not jnp.asarray: the latter compiles a copy for every new shape (seconds on a CLI call)
    x, y, heldout, params = jax.device_put((x_np[cert_rows], y_np[cert_rows],
                                            (x_np[heldout_rows], y_np[heldout_rows]), params))
    mask, frozen = (guarantee.unexercised_mask(spec, params, x) if freeze_unexercised else (None, 0))
    if fixed is not None:
        mask = jax.tree.map(lambda m, f: m * (1 - jnp.asarray(f, m.dtype)),
                            jax.tree.map(jnp.ones_like, params) if mask is None else mask, fixed)
    target = float(tau)
    if guarantee_kind == "distribution":
        own = certificates.certificate(spec, box_around(params), Constraint(x, y, float(tau)), *heldout,
                                       confidence, config.margin_tol)
        if own.lower_bound < tau:
            raise LIDError(f"the network itself classifies {own.heldout_certified_accuracy:.4f} of the "
                           f"{own.heldout_samples} held-out rows correctly; its {confidence:.0%} lower bound "
                           f"{own.lower_bound:.4f} is below tau {tau}: lower tau, or hold out more rows")
        target = guarantee.solve_target(float(tau), len(heldout_rows), confidence, solve_margin,
                                        own.certified_accuracy)
    constraint = Constraint(x, y, target)
    started = time.perf_counter()

    def solve_kind(kind_config, start_domain=None):
        if guarantee_kind == "samples":
            result = compute(spec, params, [constraint], [heldout], kind_config, bias, mask, start_domain)
            return result.best, result.state, result.lids, None
        problem = make_problem(spec, params, kind_config, bias, mask, start_domain)
        state = solve_fastest(problem, (constraint,))
        candidate = largest_meeting_target(problem, state, constraint)
        kept, test = guaranteed(spec, params, candidate, constraint, heldout, float(tau), confidence, kind_config)
        return candidate, state, [kept], test

    start, start_seconds = None, None
    if config.domain != "box":
        box_candidate, box_state, box_lids, _ = solve_kind(dataclasses.replace(config, domain="box"))
        start, start_seconds = LIDResult(box_lids, box_state), time.perf_counter() - started
        _, _, lids, test = solve_kind(config, box_candidate.domain)
    else:
        _, _, lids, test = solve_kind(config)
    return NetworkLIDs(lids, cert_rows, heldout_rows, time.perf_counter() - started, start, start_seconds,
                       guarantee_kind, confidence, target, frozen, test)
