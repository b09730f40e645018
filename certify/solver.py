"""The LID solver: the largest domain in which every constraint's certified accuracy holds.

    maximise   size(domain) = weighted mean log-width (+ the generators' log-lengths for a zonotope)
    subject to g_c = tau_c - soft_certified_accuracy_c(domain) <= 0   for each constraint c

by an augmented Lagrangian, as an optax-shaped pair of pure functions: :func:`init` and
:func:`update` (one primal Adam step on the domain's free variables, one dual ascent step on the
multipliers driven by the *hard* certified accuracy, penalty growth while violated), and
:func:`solve`, which runs ``config.steps`` updates under ``lax.scan`` and keeps a snapshot every
``config.snapshot_every`` steps. ``solve`` is deterministic, jit-compilable, vmappable over a
population of problems and differentiable with respect to the data and the bias weights.

The domain always contains the network's parameters; how its free variables describe it is the
domain kind's own business (:meth:`certify.domains.Domain.from_theta`): a box is
``[p - exp(a), p + exp(b)]``, a zonotope keeps a fixed centre with axis radius ``|p - c| + exp(a)``
and free generators. Per-parameter **bias weights** weight the size objective (room where it is
wanted) and a **mask** freezes parameters (zero width). Certifying the result is
:mod:`certify.lid`'s job: solving is heuristic, certification is exact.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from certify import bounds, certificates, domains
from certify.domains import Domain
from certify.domains.base import pytree_dataclass
from metaedit import executables, nets
from metaedit.options import option

Params = Any


class LIDError(ValueError):
    """An LID problem cannot be solved as posed (bad config, tau above what the network reaches)."""


@dataclasses.dataclass(frozen=True)
class LIDConfig:
    """Solver settings.

    Half-widths (and generator lengths) start at ``exp(init_log_radius)`` and are capped at
    ``exp(max_log_radius)`` (parameters that no certification sample depends on would otherwise grow
    without bound). The soft constraint aims at ``tau + tau_slack`` so that the hard one holds. The
    surrogate of a sample is ``sigmoid(m / temperature)`` of its margin bound ``m``, plus
    ``leak * min(m / temperature, 0)`` for samples the network itself classifies with margin, so a
    sample lost by a too-large step keeps pulling the domain back (a plain sigmoid saturates).
    """

    domain: str = option("box", "domain kind", choices=tuple(domains.DOMAINS))
    bound: str = option("interval", "bound propagation: interval (affine arithmetic for a zonotope) or linear "
                        "(also the backward linear relaxation, the better margin kept)", choices=bounds.BOUNDS)
    rank: int = option(4, "shared generators of a zonotope")
    steps: int = option(150, "solver steps")
    learning_rate: float = option(0.1, "Adam learning rate on the domain's log-widths (cosine-decayed to 1%)")
    init_log_radius: float = option(-7.0, "log half-width every parameter starts from")
    max_log_radius: float = option(0.0, "cap on the log half-widths and generator log-lengths")
    tau_slack: float = option(0.01, "the soft constraint aims at tau + this")
    temperature: float = option(0.05, "temperature of the sigmoid surrogate of a certified sample")
    leak: float = option(0.01, "slope of the surrogate below zero margin, for samples the network gets right")
    penalty: float = option(100.0, "initial augmented-Lagrangian penalty")
    penalty_growth: float = option(2.0, "penalty factor while a constraint is violated")
    penalty_max: float = option(1e4, "largest penalty")
    grow_every: int = option(25, "steps between penalty growths")
    dual_step: float = option(5.0, "dual ascent step on the multipliers")
    snapshot_every: int = option(50, "steps between snapshots (each is certified: multiple LIDs)")
    margin_tol: float | None = option(None, "a certified sample's margin bound must exceed this "
                                      "(default: 1e-4 in float32, 1e-9 in float64)")
    seed: int = option(0, "seeds the zonotope's generator directions")

    def __post_init__(self):
        if self.domain not in domains.DOMAINS:
            raise LIDError(f"domain must be {' or '.join(map(repr, domains.DOMAINS))}, got {self.domain!r}")
        for name in ("steps", "snapshot_every", "grow_every"):
            if getattr(self, name) < 1:
                raise LIDError(f"LIDConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.bound not in bounds.BOUNDS:
            raise LIDError(f"bound must be {' or '.join(map(repr, bounds.BOUNDS))}, got {self.bound!r}")
        if self.domain == "zonotope" and self.rank < 1:
            raise LIDError(f"a zonotope needs rank >= 1, got {self.rank}")
        for name in ("learning_rate", "temperature", "penalty", "penalty_growth", "dual_step"):
            if not getattr(self, name) > 0:
                raise LIDError(f"LIDConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.margin_tol is not None and not self.margin_tol >= 0:
            raise LIDError(f"LIDConfig.margin_tol must be >= 0 (a negative tolerance would certify misclassified "
                           f"samples), got {self.margin_tol}")
        if self.seed < 0:
            raise LIDError(f"LIDConfig.seed must be >= 0, got {self.seed}")

    @property
    def num_snapshots(self) -> int:
        return self.steps // self.snapshot_every

    @property
    def kind(self) -> type[Domain]:
        """The domain class the solver grows."""
        return domains.get(self.domain)


@pytree_dataclass
class LIDProblem:
    """One network and what its domain may be: params (always inside), a fixed centre (the
    centre of ``start``, or params), bias weights (>= 0) for the size objective, a 0/1 mask of free
    parameters, and optionally a domain to start from."""

    spec: nets.Spec = dataclasses.field(metadata={"static": True})
    config: LIDConfig = dataclasses.field(metadata={"static": True})
    params: Params
    center: Params
    bias: Params
    mask: Params
    start: Domain | None = None


class LIDState(NamedTuple):
    """Solver state. theta: the domain's free variables; snapshots: theta stacked [K, ...];
    snapshot_accuracy [K, C] and accuracy [C]: hard certified accuracy when taken / at the last step;
    size: the size objective at the last step."""

    theta: Any
    opt_state: Any
    multipliers: jax.Array
    penalty: jax.Array
    step: jax.Array
    snapshots: Any
    snapshot_accuracy: jax.Array
    accuracy: jax.Array
    size: jax.Array


def make_problem(spec: nets.Spec, params: Params, config: LIDConfig, bias: Params | None = None,
                 mask: Params | None = None, start: Domain | None = None) -> LIDProblem:
    """An LID problem around ``params``; ``start`` (a domain holding params) is where a zonotope starts."""
    nets.check_shapes(spec, params)
    ones = _ones_like(params)
    bias = ones if bias is None else bias
    mask = ones if mask is None else jax.tree.map(lambda m, p: jnp.asarray(m, p.dtype), mask, params)
    if start is not None and config.domain == "box":
        raise LIDError("a starting domain is only used by the zonotope solver")
    center = params if start is None else start.center
    return LIDProblem(spec=spec, config=config, params=params, center=center, bias=bias, mask=mask, start=start)


def domain_of(problem: LIDProblem, theta: Any) -> Domain:
    """The domain that the free variables ``theta`` describe (always contains ``problem.params``)."""
    return problem.config.kind.from_theta(problem, theta)


def start_domain(problem: LIDProblem) -> Domain:
    """The domain the solver starts from: ``problem.start`` as the solver's kind, or a tiny one."""
    kind = problem.config.kind
    if problem.start is not None:
        return kind.from_domain(problem.start, problem.config.rank)
    return kind.from_theta(problem, kind.initial_theta(problem))


def size(problem: LIDProblem, domain: Domain) -> jax.Array:
    """The objective, per weighted free parameter: the bias-weighted sum of log-widths plus the
    shared generators' log-lengths (``sum_k log ||G_k||``; none for a box)."""
    weights = jax.tree.map(lambda b, m: b * m, problem.bias, problem.mask)
    total_weight = sum(w.sum() for w in jax.tree.leaves(weights))
    log_widths = sum((w * jnp.where(w > 0, jnp.log(jnp.maximum(2 * r, 1e-30)), 0.0)).sum()
                     for w, r in zip(jax.tree.leaves(weights), jax.tree.leaves(domain.radius)))
    return (log_widths + domain.generator_log_lengths()) / jnp.maximum(total_weight, 1e-12)


def _optimizer(config: LIDConfig) -> optax.GradientTransformation:
    """Adam with a cosine decay to 1% of the learning rate, so the domain settles at the boundary."""
    # eps_root keeps the derivative of sqrt(v) finite where a gradient is 0: the solve is differentiated through
    return optax.adam(optax.cosine_decay_schedule(config.learning_rate, config.steps, alpha=0.01), eps_root=1e-16)


def init(problem: LIDProblem, num_constraints: int) -> LIDState:
    """The solver's starting state: a tiny domain around the params (or the start), multipliers 0."""
    theta = problem.config.kind.initial_theta(problem)
    dtype = jax.tree.leaves(problem.params)[0].dtype
    k = problem.config.num_snapshots
    return LIDState(
        theta=theta,
        opt_state=_optimizer(problem.config).init(theta),
        multipliers=jnp.zeros(num_constraints, dtype),
        penalty=jnp.asarray(problem.config.penalty, dtype),
        step=jnp.zeros((), jnp.int32),
        snapshots=jax.tree.map(lambda t: jnp.zeros((k,) + t.shape, t.dtype), theta),
        snapshot_accuracy=jnp.zeros((k, num_constraints), dtype),
        accuracy=jnp.zeros(num_constraints, dtype),
        size=jnp.zeros((), dtype),
    )


def _point_margin(problem: LIDProblem, constraint: certificates.Constraint) -> jax.Array:
    """[n] the network's own margin (true logit minus the best other) on the constraint's samples."""
    logits = nets.apply(problem.spec, problem.params, constraint.x)
    return jax.lax.stop_gradient(bounds.margins(logits, constraint.y, constraint.competitors))


def certifiable(problem: LIDProblem, constraints) -> tuple[jax.Array, ...]:
    """Per constraint, [n] 0/1: the samples the network itself classifies with a margin above the
    tolerance (the ones a lost margin keeps pulling back); constant during a solve."""
    c = problem.config
    masks = []
    for constraint in constraints:
        tol = certificates.default_margin_tol(constraint.x.dtype, c.margin_tol)
        masks.append((_point_margin(problem, constraint) > tol).astype(constraint.x.dtype))
    return tuple(masks)


def _lagrangian(theta, problem: LIDProblem, constraints, pulling, multipliers, penalty):
    c = problem.config
    domain = domain_of(problem, theta)
    soft, hard = [], []
    for constraint, keep in zip(constraints, pulling):
        s, h = certificates.soft_and_hard_accuracy(problem.spec, domain, constraint, c.temperature, c.margin_tol,
                                                   c.leak, keep, c.bound)
        soft.append(s)
        hard.append(h)
    taus = jnp.stack([jnp.asarray(k.tau, penalty.dtype) for k in constraints]) + c.tau_slack
    violation = taus - jnp.stack(soft)
    augmented = (jax.nn.relu(multipliers + penalty * violation) ** 2 - multipliers ** 2) / (2 * penalty)
    objective = size(problem, domain)
    return -objective + augmented.sum(), (objective, jnp.stack(hard))


def update(problem: LIDProblem, state: LIDState, constraints: Sequence[certificates.Constraint],
           pulling: tuple[jax.Array, ...] | None = None) -> LIDState:
    """One primal-dual step. The snapshot (if due) and ``accuracy`` describe the domain *before*
    the step (the one the hard accuracies were measured on). ``pulling``: :func:`certifiable` of the
    constraints (computed here when not given)."""
    c = problem.config
    constraints = tuple(constraints)
    pulling = certifiable(problem, constraints) if pulling is None else pulling
    grads, (objective, hard) = jax.grad(_lagrangian, has_aux=True)(
        state.theta, problem, constraints, pulling, state.multipliers, state.penalty)
    updates, opt_state = _optimizer(c).update(grads, state.opt_state, state.theta)
    taus = jnp.stack([jnp.asarray(k.tau, hard.dtype) for k in constraints])
    violation = jax.lax.stop_gradient(taus - hard)
    multipliers = jax.nn.relu(state.multipliers + c.dual_step * violation)
    grow = ((state.step + 1) % c.grow_every == 0) & (violation > 0).any()
    penalty = jnp.where(grow, jnp.minimum(state.penalty * c.penalty_growth, c.penalty_max), state.penalty)
    due = (state.step + 1) % c.snapshot_every == 0
    index = jnp.minimum((state.step + 1) // c.snapshot_every - 1, max(c.num_snapshots - 1, 0))

    def record(stack, value):
        return jnp.where(due, stack.at[index].set(value), stack) if c.num_snapshots else stack

    snapshots = jax.tree.map(record, state.snapshots, state.theta)
    theta = optax.apply_updates(state.theta, updates)
    theta = {name: jax.tree.map(lambda x: jnp.minimum(x, c.max_log_radius), value) if name.startswith("log") else value
             for name, value in theta.items()}
    return LIDState(
        theta=theta, opt_state=opt_state, multipliers=multipliers,
        penalty=penalty, step=state.step + 1, snapshots=snapshots,
        snapshot_accuracy=record(state.snapshot_accuracy, hard), accuracy=hard, size=objective,
    )


def solve(problem: LIDProblem, constraints: Sequence[certificates.Constraint]) -> LIDState:
    """``config.steps`` updates under ``lax.scan`` from :func:`init` (pure: jit/vmap/grad it)."""
    constraints = tuple(constraints)
    pulling = certifiable(problem, constraints)  # once, outside the loop

    def body(state, _):
        return update(problem, state, constraints, pulling), None

    state, _ = jax.lax.scan(body, init(problem, len(constraints)), None, length=problem.config.steps)
    return state


_solve_jit = executables.jit(solve)
_ones_like = jax.jit(lambda tree: jax.tree.map(jnp.ones_like, tree))
_init_jit = executables.jit(init, static_argnames="num_constraints")
_update_jit = executables.jit(update)
_certifiable_jit = executables.jit(certifiable)


def solve_fastest(problem: LIDProblem, constraints: Sequence[certificates.Constraint]) -> LIDState:
    """:func:`solve`'s steps, compiled the fastest way for this backend and architecture.

    On a CPU, XLA runs convolutions several times slower inside a loop body than at top level
    (measured 4x for a digits CNN's bounds), so CNN problems there take one jitted :func:`update` per
    step from the host; everything else runs the single ``lax.scan`` of :func:`solve`.
    """
    constraints = tuple(constraints)
    if not (problem.spec.kind == "cnn" and jax.default_backend() == "cpu"):
        return _solve_jit(problem, constraints)
    state = _init_jit(problem, len(constraints))
    pulling = _certifiable_jit(problem, constraints)
    for _ in range(problem.config.steps):
        state = _update_jit(problem, state, constraints, pulling)
    return state
