"""The LID solver: the largest domain in which every constraint's certified accuracy holds.

    maximise   size(domain) = weighted mean log-width (box) / log-volume bound per parameter (zonotope)
    subject to g_c = tau_c - soft_certified_accuracy_c(domain) <= 0   for each constraint c

by an augmented Lagrangian, as an optax-shaped pair of pure functions: :func:`init` and
:func:`update` (one primal Adam step on the domain's free variables, one dual ascent step on the
multipliers driven by the *hard* certified accuracy, penalty growth while violated), and
:func:`solve`, which runs ``config.steps`` updates under ``lax.scan`` and keeps a snapshot every
``config.snapshot_every`` steps. ``solve`` is jit-compiled, deterministic, vmappable over a
population of problems and differentiable with respect to the data and the bias weights.

The domain always contains the network's parameters: a box is ``[p - exp(a), p + exp(b)]``; a
zonotope keeps a fixed centre ``c`` (``p`` or the centre of a starting box) with axis radius
``|p - c| + exp(a)`` and free generators. Per-parameter **bias weights** weight the size objective
(room where it is wanted) and a **mask** freezes parameters (zero width).

:func:`certify_lids` turns the snapshots into certified LIDs on the host: each is shrunk towards
``p`` (bisection on a scale) until every constraint's *hard* certified accuracy holds, then
reported with its held-out Clopper-Pearson bound. Solving is heuristic; certification is exact.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from certify import domains, specs
from certify.bounds import output_bounds
from certify.domains import Box, Domain, Zonotope
from metaedit import nets

Params = Any


class LIDError(ValueError):
    """An LID problem cannot be solved as posed (bad config, tau above what the network reaches)."""


@dataclasses.dataclass(frozen=True)
class LIDConfig:
    """Solver settings. ``domain``: "box" or "zonotope"; ``rank``: zonotope generators.

    Half-widths (and generator lengths) start at ``exp(init_log_radius)`` and are capped at
    ``exp(max_log_radius)`` (parameters that no certification sample depends on would otherwise grow
    without bound). The soft constraint aims at ``tau + tau_slack`` so that the hard one holds. The
    surrogate of a sample is ``sigmoid(m / temperature)`` of its margin bound ``m``, plus
    ``leak * min(m / temperature, 0)`` for samples the network itself classifies with margin, so a
    sample lost by a too-large step keeps pulling the domain back (a plain sigmoid saturates).
    """

    domain: str = "box"
    rank: int = 4
    steps: int = 300
    learning_rate: float = 0.05
    init_log_radius: float = -7.0
    max_log_radius: float = 0.0
    tau_slack: float = 0.01
    temperature: float = 0.05
    leak: float = 0.01
    penalty: float = 100.0
    penalty_growth: float = 2.0
    penalty_max: float = 1e4
    grow_every: int = 25
    dual_step: float = 5.0
    snapshot_every: int = 50
    margin_tol: float | None = None
    seed: int = 0

    def __post_init__(self):
        if self.domain not in ("box", "zonotope"):
            raise LIDError(f"domain must be 'box' or 'zonotope', got {self.domain!r}")
        for name in ("steps", "snapshot_every", "grow_every"):
            if getattr(self, name) < 1:
                raise LIDError(f"LIDConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.domain == "zonotope" and self.rank < 1:
            raise LIDError(f"a zonotope needs rank >= 1, got {self.rank}")
        for name in ("learning_rate", "temperature", "penalty", "penalty_growth", "dual_step"):
            if not getattr(self, name) > 0:
                raise LIDError(f"LIDConfig.{name} must be > 0, got {getattr(self, name)}")

    @property
    def num_snapshots(self) -> int:
        return self.steps // self.snapshot_every


@flax.struct.dataclass
class LIDProblem:
    """One network and what its domain may be: params (always inside), a fixed centre for
    zonotopes, bias weights (>= 0) for the size objective, a 0/1 mask of free parameters."""

    spec: nets.Spec = flax.struct.field(pytree_node=False)
    config: LIDConfig = flax.struct.field(pytree_node=False)
    params: Params
    center: Params
    bias: Params
    mask: Params
    start_radius: Params | None = None


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
                 mask: Params | None = None, start: Box | None = None) -> LIDProblem:
    """An LID problem around ``params``; ``start`` (a box holding params) centres a zonotope on it."""
    nets.check_shapes(spec, params)
    ones = jax.tree.map(jnp.ones_like, params)
    bias = ones if bias is None else bias
    mask = ones if mask is None else jax.tree.map(lambda m, p: jnp.asarray(m, p.dtype), mask, params)
    if start is None:
        return LIDProblem(spec=spec, config=config, params=params, center=params, bias=bias, mask=mask)
    if config.domain != "zonotope":
        raise LIDError("a starting box is only used by the zonotope solver")
    return LIDProblem(spec=spec, config=config, params=params, center=start.center, bias=bias, mask=mask,
                      start_radius=start.radius)


def _initial_theta(problem: LIDProblem) -> Any:
    """Box: log half-widths below and above p. Zonotope: log of the axis radius beyond |p - c|,
    and per generator a log-length and a direction. A zonotope started from a box (``problem.center``
    is the box's centre and ``problem.start_radius`` its radius) starts equal to that box."""
    c = problem.config
    log_radius = jax.tree.map(lambda p: jnp.full_like(p, c.init_log_radius), problem.params)
    if c.domain == "box":
        return {"log_lo": log_radius, "log_hi": log_radius}
    if problem.start_radius is not None:
        log_radius = jax.tree.map(
            lambda r, p, ctr: jnp.log(jnp.maximum(r - jnp.abs(p - ctr), 1e-30)),
            problem.start_radius, problem.params, problem.center)
    leaves, treedef = jax.tree.flatten(problem.params)
    keys = jax.random.split(jax.random.key(c.seed), len(leaves))
    directions = jax.tree.unflatten(treedef, [
        jax.random.normal(k, (c.rank,) + l.shape, l.dtype) for k, l in zip(keys, leaves)])
    dtype = leaves[0].dtype
    return {"log_radius": log_radius, "log_length": jnp.full((c.rank,), c.init_log_radius, dtype),
            "directions": directions}


def _generators(problem: LIDProblem, theta: Any) -> Params:
    """[r, ...] generators: exp(log_length_k) times the unit direction k (masked, then normalised)."""
    masked = jax.tree.map(lambda m, d: m * d, problem.mask, theta["directions"])
    norms = jnp.sqrt(sum((d.reshape(d.shape[0], -1) ** 2).sum(1) for d in jax.tree.leaves(masked)))
    scale = jnp.exp(theta["log_length"]) / jnp.maximum(norms, 1e-30)
    return jax.tree.map(lambda d: d * scale.reshape((-1,) + (1,) * (d.ndim - 1)), masked)


def domain_of(problem: LIDProblem, theta: Any) -> Domain:
    """The domain that the free variables ``theta`` describe (always contains ``problem.params``)."""
    p, m = problem.params, problem.mask
    if "log_lo" in theta:
        return Box(jax.tree.map(lambda p, m, a: p - m * jnp.exp(a), p, m, theta["log_lo"]),
                   jax.tree.map(lambda p, m, b: p + m * jnp.exp(b), p, m, theta["log_hi"]))
    radius = jax.tree.map(lambda p, c, m, a: jnp.abs(p - c) + m * jnp.exp(a), p, problem.center, m, theta["log_radius"])
    return Zonotope(problem.center, radius, _generators(problem, theta))


def size(problem: LIDProblem, domain: Domain) -> jax.Array:
    """The objective, per weighted free parameter: the bias-weighted sum of log-widths (box), plus
    for a zonotope the log-lengths of its generators (``sum_k log ||G_k||``)."""
    weights = jax.tree.map(lambda b, m: b * m, problem.bias, problem.mask)
    total_weight = sum(w.sum() for w in jax.tree.leaves(weights))
    radius = domain.radius
    log_widths = sum((w * jnp.where(w > 0, jnp.log(jnp.maximum(2 * r, 1e-30)), 0.0)).sum()
                     for w, r in zip(jax.tree.leaves(weights), jax.tree.leaves(radius)))
    if isinstance(domain, Zonotope):
        lengths = jnp.sqrt(sum((g.reshape(g.shape[0], -1) ** 2).sum(1) for g in jax.tree.leaves(domain.generators)))
        log_widths = log_widths + jnp.log(jnp.maximum(lengths, 1e-30)).sum()
    return log_widths / jnp.maximum(total_weight, 1e-12)


def _optimizer(config: LIDConfig) -> optax.GradientTransformation:
    """Adam with a cosine decay to 1% of the learning rate, so the domain settles at the boundary."""
    # eps_root keeps the derivative of sqrt(v) finite where a gradient is 0: the solve is differentiated through
    return optax.adam(optax.cosine_decay_schedule(config.learning_rate, config.steps, alpha=0.01), eps_root=1e-16)


def init(problem: LIDProblem, num_constraints: int) -> LIDState:
    """The solver's starting state: a tiny domain around the params, multipliers 0."""
    theta = _initial_theta(problem)
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


def _point_margin(problem: LIDProblem, constraint: specs.Constraint) -> jax.Array:
    """[n] the network's own margin (true logit minus the best other) on the constraint's samples."""
    logits = nets.apply(problem.spec, problem.params, constraint.x)
    true = jnp.take_along_axis(logits, constraint.y[:, None], axis=1)[:, 0]
    others = jnp.where(jax.nn.one_hot(constraint.y, logits.shape[1], dtype=bool), -jnp.inf, logits)
    return jax.lax.stop_gradient(true - others.max(axis=1))


def _lagrangian(theta, problem: LIDProblem, constraints, multipliers, penalty):
    c = problem.config
    domain = domain_of(problem, theta)
    soft, hard = [], []
    for constraint in constraints:
        tol = specs.default_margin_tol(constraint.x.dtype) if c.margin_tol is None else c.margin_tol
        margin = output_bounds(problem.spec, domain, constraint.x, constraint.y).margin_lo
        scaled_margin = (margin - tol) / c.temperature
        certifiable = _point_margin(problem, constraint) > tol
        surrogate = jax.nn.sigmoid(scaled_margin) + c.leak * jnp.minimum(scaled_margin, 0.0) * certifiable
        soft.append(specs.weighted_mean(surrogate, constraint.weight))
        hard.append(specs.weighted_mean((margin > tol).astype(margin.dtype), constraint.weight))
    taus = jnp.stack([jnp.asarray(k.tau, penalty.dtype) for k in constraints]) + c.tau_slack
    violation = taus - jnp.stack(soft)
    augmented = (jax.nn.relu(multipliers + penalty * violation) ** 2 - multipliers ** 2) / (2 * penalty)
    objective = size(problem, domain)
    return -objective + augmented.sum(), (objective, jnp.stack(hard))


def update(problem: LIDProblem, state: LIDState, constraints: Sequence[specs.Constraint]) -> LIDState:
    """One primal-dual step. The snapshot (if due) and ``accuracy`` describe the domain *before*
    the step (the one the hard accuracies were measured on)."""
    c = problem.config
    grads, (objective, hard) = jax.grad(_lagrangian, has_aux=True)(
        state.theta, problem, tuple(constraints), state.multipliers, state.penalty)
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


def solve(problem: LIDProblem, constraints: Sequence[specs.Constraint]) -> LIDState:
    """``config.steps`` updates under ``lax.scan`` from :func:`init` (pure: jit/vmap/grad it)."""
    constraints = tuple(constraints)

    def body(state, _):
        return update(problem, state, constraints), None

    state, _ = jax.lax.scan(body, init(problem, len(constraints)), None, length=problem.config.steps)
    return state


_solve_jit = jax.jit(solve)
_init_jit = jax.jit(init, static_argnums=1)
_update_jit = jax.jit(update)


def run(problem: LIDProblem, constraints: Sequence[specs.Constraint]) -> LIDState:
    """:func:`solve`'s steps, compiled the fastest way for this backend and architecture.

    On a CPU, XLA runs convolutions several times slower inside a loop body than at top level
    (measured 4x for a digits CNN's bounds), so CNN problems there take one jitted :func:`update` per
    step from the host; everything else runs the single ``lax.scan`` of :func:`solve`.
    """
    constraints = tuple(constraints)
    if not (isinstance(problem.spec, nets.CNNSpec) and jax.default_backend() == "cpu"):
        return _solve_jit(problem, constraints)
    state = _init_jit(problem, len(constraints))
    for _ in range(problem.config.steps):
        state = _update_jit(problem, state, constraints)
    return state


def scaled(domain: Domain, point: Params, scale: float) -> Domain:
    """``point + scale * (domain - point)``: the domain shrunk towards a point inside it."""
    if isinstance(domain, Box):
        return Box(jax.tree.map(lambda p, l: p + scale * (l - p), point, domain.lo),
                   jax.tree.map(lambda p, h: p + scale * (h - p), point, domain.hi))
    return Zonotope(jax.tree.map(lambda p, c: p + scale * (c - p), point, domain.center),
                    jax.tree.map(lambda r: scale * r, domain.radius),
                    jax.tree.map(lambda g: scale * g, domain.generators))


class LID(NamedTuple):
    """A certified locally invariant domain: the domain, its per-constraint certificates, its
    log-volume (bound), the solver step it came from and the scale it was shrunk by (1 = none)."""

    domain: Domain
    certificates: tuple[specs.Certificate, ...]
    log_volume: float
    step: int
    scale: float


@functools.partial(jax.jit, static_argnames=("spec", "margin_tol"))
def _hard_accuracies(spec, domain, xs, ys, weights, margin_tol):
    return jnp.stack([specs.certified_accuracy(spec, domain, x, y, w, margin_tol)
                      for x, y, w in zip(xs, ys, weights)])


def certify_lids(problem: LIDProblem, state: LIDState, constraints: Sequence[specs.Constraint],
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

    point = domains.box_around(problem.params)
    if not holds(point):
        reached = np.asarray(_hard_accuracies(problem.spec, point, xs, ys, weights, tol))
        raise LIDError(
            f"the network itself certifies only {np.round(reached, 4).tolist()} of the constraint samples "
            f"(margin > tolerance) against tau {taus.tolist()}: lower tau"
        )
    if problem.start_radius is not None:  # the starting box itself, as a zonotope
        start = Zonotope(problem.center, problem.start_radius,
                         jax.tree.map(lambda p: jnp.zeros((problem.config.rank,) + p.shape, p.dtype), problem.params))
    else:
        start = domain_of(problem, _initial_theta(problem))
    candidates = [(0, start)] + [
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
                low, high = (middle, high) if holds(scaled(domain, problem.params, middle)) else (low, middle)
            scale = low
            domain = scaled(domain, problem.params, scale)
        certificates = tuple(
            specs.certificate(problem.spec, domain, k, hx, hy, confidence, tol)
            for k, (hx, hy) in zip(constraints, heldout))
        lids.append(LID(domain, certificates, float(domains.log_volume(domain)), step, scale))
    return lids


def best(lids: Sequence[LID]) -> LID:
    """The largest of several certified LIDs."""
    return max(lids, key=lambda lid: lid.log_volume)


def compute(spec: nets.Spec, params: Params, constraints: Sequence[specs.Constraint],
            heldout: Sequence[tuple[Any, Any]], config: LIDConfig, bias=None, mask=None,
            start: Box | None = None) -> tuple[list[LID], LIDState]:
    """Solve and certify in one call: returns the certified LIDs (one per snapshot and the final
    domain) and the solver state."""
    specs.check_constraints(constraints)
    problem = make_problem(spec, params, config, bias, mask, start)
    state = run(problem, constraints)
    return certify_lids(problem, state, constraints, heldout), state
