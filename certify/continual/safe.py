"""Safe updates: learn new tasks inside certified domains of the old ones.

After task t the network's parameters get a *box* LID (:mod:`certify.lid`) whose constraints
certify every task seen so far on its certification samples, each at

    tau_j = min(max(acc_j - delta, acc_j / 2), tau_max)      (acc_j: accuracy on task j's samples
                                                              when task j was learnt)

and task t+1 is trained with Adam followed by projection onto that box (a clip), so every old task
keeps its certified accuracy whatever the new task does. The solver's snapshots give several
certified LIDs; a **strategy** picks one (:data:`STRATEGIES`). One solve's snapshots are growth
stages of one box, and on Split MNIST-5k every strategy picked alike; with ``pool="biases"`` the
candidates are the snapshots of one solve per bias weighting (:data:`POOL_BIASES`), boxes of
different shapes to choose between. **Bias weights** make room where the new task wants it (:data:`BIASES`):

* ``none``: every parameter counts the same;
* ``fisher``: ``1 / (F + mean F)`` with F the old tasks' diagonal empirical Fisher (room where the
  old tasks care least);
* ``update``: ``|g| + 0.1 mean |g|`` with g the new task's gradient on a **lookahead buffer** of
  next-task samples (room along the update);
* ``lookahead``: learnt: starting from ``update``, bias = ``softplus(phi)`` is trained by Adam on
  the loss of the lookahead buffer after K projected steps inside LID(bias), the gradient taken
  through the unrolled LID solve (``jax.grad`` through ``lax.scan``) and the K steps; the bias
  with the lowest buffer loss met is kept.

All weights are normalised to mean 1. **Re-centred LIDs** (``recentre`` R > 1) let a new task move
further than one box allows: its steps are cut into R parts, and after each part but the last a
new box LID certifying every old task (same samples, same tau) is solved around the current
parameters, which lie in the last box and so keep every old task's certificate; training goes on
inside the new box (or the old one, if no new box certifies). Any box that certifies the old
tasks will do, so the certificate after the task is the box the parameters end in. Every
scenario is supported: in the task-incremental one
each task trains and is evaluated on its own classes' logits, and its certificate is stated on
them too (:class:`certify.certificates.Constraint` ``competitors``: a sample is certified when its
true logit provably beats the task's other logits).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from certify import certificates, lid, project
from certify.continual.tasks import ContinualError, TaskSequence, check_network, evaluate
from certify.domains import Box
from certify.solver import LIDConfig
from metaedit import nets, training
from metaedit.options import option

Params = Any
STRATEGIES = ("largest", "closest", "largest-closest", "best-loss")
BIASES = ("none", "fisher", "update", "lookahead")
POOLS = ("snapshots", "biases")
POOL_BIASES = ("none", "fisher", "update")
"""The bias weightings solved for a ``biases`` pool (beside the config's own)."""


@dataclasses.dataclass(frozen=True)
class SafeConfig:
    """Settings of a safe continual run; ``lid`` is the solver's (a box domain)."""

    steps_per_task: int = option(300, "Adam steps per task")
    batch: int = option(64, "rows per step")
    learning_rate: float = option(1e-3, "Adam learning rate")
    delta: float = option(0.05, "an old task keeps tau = min(max(acc - delta, acc / 2), tau_max)")
    tau_max: float = option(0.95, "the largest tau an old task is held to")
    cert_samples: int = option(256, "certification samples per task")
    heldout_samples: int = option(1000, "held-out samples per task (for the Clopper-Pearson bound)")
    lookahead_samples: int = option(64, "next-task samples in the lookahead buffer")
    lookahead_steps: int = option(10, "projected steps the lookahead bias and strategies look ahead")
    lookahead_learning_rate: float = option(0.05, "learning rate of the lookahead steps")
    meta_steps: int = option(5, "Adam steps on the learnt lookahead bias")
    meta_learning_rate: float = option(0.03, "learning rate of the learnt bias")
    strategy: str = option("largest", "how one of the certified snapshots is picked", choices=STRATEGIES)
    pool: str = option("snapshots", "the certified LIDs the strategy picks from: the snapshots of one solve with "
                       "`bias` (snapshots), or those of one solve per bias weighting, none, fisher, update and "
                       "`bias` (biases)", choices=POOLS)
    recentre: int = option(1, "box LIDs per new task: its steps are cut into this many parts, and before each part "
                              "after the first a new LID certifying every old task is solved around the parameters "
                              "(1: one LID per task boundary). Adam restarts with each part")
    bias: str = option("none", "bias weights of the LID's size objective", choices=BIASES)
    lid: LIDConfig = option(LIDConfig(steps=200, snapshot_every=40, learning_rate=0.05),
                            "the LID solver's settings (a box)", flag=False)
    seed: int = option(0, "seeds the network, the samples and the batches")

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ContinualError(f"unknown LID strategy {self.strategy!r}; known: {', '.join(STRATEGIES)}")
        if self.bias not in BIASES:
            raise ContinualError(f"unknown bias {self.bias!r}; known: {', '.join(BIASES)}")
        if self.pool not in POOLS:
            raise ContinualError(f"unknown LID pool {self.pool!r}; known: {', '.join(POOLS)}")
        if self.lid.domain != "box":
            raise ContinualError("safe training projects onto boxes; use LIDConfig(domain='box')")
        if not 0 < self.tau_max <= 1:
            raise ContinualError(f"tau_max must lie in (0, 1], got {self.tau_max}")
        if not 0 <= self.delta < 1:
            raise ContinualError(f"delta must lie in [0, 1), got {self.delta}")
        for name in ("steps_per_task", "batch", "cert_samples", "heldout_samples", "lookahead_steps", "recentre"):
            if getattr(self, name) < 1:
                raise ContinualError(f"SafeConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.recentre > self.steps_per_task:
            raise ContinualError(f"recentre ({self.recentre}) cannot exceed steps_per_task ({self.steps_per_task})")
        if self.meta_steps < 0:
            raise ContinualError(f"SafeConfig.meta_steps must be >= 0, got {self.meta_steps}")
        if self.lookahead_samples < 1:
            raise ContinualError(f"the lookahead buffer is empty (lookahead_samples={self.lookahead_samples})")


def tau_rule(accuracy: float, delta: float, tau_max: float) -> float:
    """``min(max(acc - delta, acc / 2), tau_max)``: the certified accuracy an old task keeps."""
    if not 0 < tau_max <= 1:
        raise ContinualError(f"tau_max must lie in (0, 1], got {tau_max}")
    return float(min(max(accuracy - delta, accuracy / 2), tau_max))


# --------------------------------------------------------------------------- training inside a box


def projected_steps(spec, params: Params, box: Box | None, x, y, steps: int, learning_rate: float,
                    batch: int, key, mask=None) -> Params:
    """``steps`` Adam steps on minibatches of (x [n, ...], y [n]), each followed by the projection onto
    ``box`` (None: unconstrained); ``mask`` [C] bool (optional) the logits that take part (a
    task-incremental task's). Pure; differentiable with respect to the box (``eps_root`` keeps
    Adam's square root differentiable where a gradient is 0)."""
    tx = optax.adam(learning_rate, eps_root=1e-16)
    step = training.make_step(tx, training.batch_loss(spec), project=None if box is None else box.project)

    def body(state, k):
        rows = jax.random.randint(k, (min(batch, y.shape[0]),), 0, y.shape[0])
        return step(state, training.Batch(x[rows], y[rows], mask=mask))[0], None

    state, _ = jax.lax.scan(body, training.init_state(params, tx), jax.random.split(key, steps))
    return state.params


# :func:`projected_steps` compiled once per network, step count and batch size
projected_steps_jit = jax.jit(projected_steps, static_argnums=(0, 5, 7))


# --------------------------------------------------------------------------- bias weights


def _normalised(tree):
    total = sum(leaf.sum() for leaf in jax.tree.leaves(tree))
    count = sum(leaf.size for leaf in jax.tree.leaves(tree))
    return jax.tree.map(lambda leaf: leaf * count / total, tree)


def fisher_bias(spec, params: Params, constraints) -> Params:
    """``1 / (F + mean F)`` normalised to mean 1; F: the diagonal empirical Fisher on the constraints'
    samples (each on its ``competitors`` logits), weighted by their sample counts."""
    total = sum(c.y.shape[0] for c in constraints)
    parts = [jax.tree.map(lambda f, n=c.y.shape[0]: f * n / total,
                          training.empirical_fisher(spec, params, c.x, c.y, mask=c.competitors)) for c in constraints]
    fisher = jax.tree.map(lambda *f: sum(f), *parts)
    mean = sum(f.sum() for f in jax.tree.leaves(fisher)) / sum(f.size for f in jax.tree.leaves(fisher))
    return _normalised(jax.tree.map(lambda f: 1.0 / (f + mean + 1e-30), fisher))


def update_bias(spec, params: Params, x, y, mask=None) -> Params:
    """``|g| + 0.1 mean |g|`` normalised to mean 1; g: the gradient of the loss on (x, y) (over the
    ``mask`` logits [C] when given)."""
    grads = jax.tree.map(jnp.abs, jax.grad(training.cross_entropy, argnums=1)(spec, params, x, y, mask))
    mean = sum(g.sum() for g in jax.tree.leaves(grads)) / sum(g.size for g in jax.tree.leaves(grads))
    return _normalised(jax.tree.map(lambda g: g + 0.1 * mean + 1e-30, grads))


def lookahead_loss(phi: Params, spec, params: Params, constraints, config: "SafeConfig", x, y, key,
                   mask=None) -> jax.Array:
    """Loss on the lookahead buffer (x, y) after ``config.lookahead_steps`` projected steps inside
    the box LID solved with bias ``softplus(phi)`` (differentiable in ``phi`` through the solve)."""
    bias = _normalised(jax.tree.map(jax.nn.softplus, phi))
    problem = lid.make_problem(spec, params, config.lid, bias=bias)
    box = lid.domain_of(problem, lid.solve(problem, constraints).theta)
    moved = projected_steps(spec, params, box, x, y, config.lookahead_steps, config.lookahead_learning_rate,
                            config.batch, key, mask)
    return training.cross_entropy(spec, moved, x, y, mask)


# the lookahead loss and its gradient in phi, compiled once per network, constraint shapes and config
_lookahead_value_and_grad = jax.jit(jax.value_and_grad(lookahead_loss), static_argnums=(1, 4))


def inverse_softplus(b: jax.Array) -> jax.Array:
    """``log(exp(b) - 1)`` without overflow (``b + log(1 - exp(-b))``): a bias of 100 is fine."""
    return b + jnp.log(-jnp.expm1(-b))


def learned_bias(spec, params: Params, constraints, config: "SafeConfig", x, y, key,
                 mask=None) -> tuple[Params, list[float]]:
    """Bias weights learnt by :func:`lookahead_loss` (Adam on phi from the ``update`` bias).

    Returns the weights with the lowest meta-loss met along the way (the start included, so the
    learnt bias is never worse on the buffer than the ``update`` one) and the meta-loss at each
    point of the trajectory."""
    start = update_bias(spec, params, x, y, mask)
    phi = jax.tree.map(inverse_softplus, start)
    tx = optax.adam(config.meta_learning_rate)
    state = tx.init(phi)
    history, best = [], (np.inf, phi)
    for step in range(config.meta_steps + 1):
        value, grads = _lookahead_value_and_grad(phi, spec, params, tuple(constraints), config, x, y, key, mask)
        history.append(float(value))
        if history[-1] < best[0]:
            best = (history[-1], phi)
        if step == config.meta_steps:
            break
        updates, state = tx.update(grads, state, phi)
        phi = optax.apply_updates(phi, updates)
    return _normalised(jax.tree.map(jax.nn.softplus, best[1])), history


# --------------------------------------------------------------------------- choosing among LIDs


def choose_index(lids: list[lid.LID], strategy: str, spec, params: Params, x, y, config: SafeConfig, key,
                 mask=None) -> int:
    """The index of one of several certified LIDs around ``params``, by ``strategy``:

    * ``largest``: the largest log-volume;
    * ``closest``: the one whose projection of an unconstrained lookahead point (params after
      ``lookahead_steps`` steps on the buffer (x, y)) lies nearest to it;
    * ``largest-closest``: the largest among those within 1.5 times the closest distance;
    * ``best-loss``: the lowest buffer loss after ``lookahead_steps`` projected steps inside it.
    """
    if strategy == "largest":
        return lid.best_index(lids)
    steps, rate = config.lookahead_steps, config.lookahead_learning_rate
    if strategy == "best-loss":
        losses = [float(training.cross_entropy(
            spec, projected_steps_jit(spec, params, l.domain, x, y, steps, rate, config.batch, key, mask), x, y, mask))
            for l in lids]
        return int(np.argmin(losses))
    target = projected_steps_jit(spec, params, None, x, y, steps, rate, config.batch, key, mask)
    distances = np.array([float(project.distance(target, l.domain.project(target))) for l in lids])
    if strategy == "closest":
        return int(np.argmin(distances))
    return lid.best_index(lids, [i for i, d in enumerate(distances) if d <= 1.5 * distances.min() + 1e-12])


# --------------------------------------------------------------------------- the continual run


def _split_steps(steps: int, parts: int) -> list[int]:
    """``steps`` cut into ``parts`` counts that differ by at most one (the larger ones first)."""
    return [steps // parts + (k < steps % parts) for k in range(parts)]


def _bias(spec, params: Params, constraints, config: SafeConfig, buffer, key, mask):
    """The config's bias weights around ``params`` (None for ``none``) and the meta-loss history (learnt
    bias only); ``buffer`` = (x, y) of the task to be learnt."""
    if config.bias == "fisher":
        return fisher_bias(spec, params, constraints), None
    if config.bias == "update":
        return update_bias(spec, params, *buffer, mask), None
    if config.bias == "lookahead":
        return learned_bias(spec, params, constraints, config, *buffer, key, mask)
    return None, None


def pool_biases(config: SafeConfig) -> tuple[str, ...]:
    """The bias weightings whose LIDs the strategy picks from: the config's own, then the pool's others."""
    return (config.bias,) if config.pool == "snapshots" else tuple(dict.fromkeys((config.bias,) + POOL_BIASES))


class Pick(NamedTuple):
    """A chosen LID and where it came from: the bias weighting it was solved with and its solver step."""

    chosen: lid.LID
    bias: str

    def describe(self) -> str:
        return f"{self.bias}@{self.chosen.step}"


def _new_lid(spec, params: Params, constraints, heldout, config: SafeConfig, buffer, bias_key, choice_key,
             mask) -> tuple[Pick, list[float] | None]:
    """A certified box LID of every constraint around ``params``, picked by the config's strategy from
    the certified snapshots of one solve per bias weighting of the pool (:func:`pool_biases`)."""
    candidates, origins, history = [], [], None
    for name in pool_biases(config):
        bias, learnt = _bias(spec, params, constraints, dataclasses.replace(config, bias=name), buffer, bias_key, mask)
        history = learnt if history is None else history
        found = lid.compute(spec, params, constraints, heldout, config.lid, bias=bias).lids
        candidates += found
        origins += [name] * len(found)
    picked = choose_index(candidates, config.strategy, spec, params, *buffer, config, choice_key, mask)
    return Pick(candidates[picked], origins[picked]), history


def _recentred(spec, params: Params, current: lid.LID, constraints, heldout, config: SafeConfig, buffer, key,
               mask) -> Pick:
    """A new certified box LID around ``params``, or ``current`` (which holds them) when none certifies.

    The new box is taken even when it is smaller: the parameters have usually been clipped to a face
    of ``current``, which leaves no room along the update, while the new box leaves its radius in
    every direction. The learnt bias is not re-learnt here: it falls back to ``update``."""
    if config.bias == "lookahead":
        config = dataclasses.replace(config, bias="update")
    try:
        return _new_lid(spec, params, constraints, heldout, config, buffer, key, key, mask)[0]
    except lid.LIDError:
        return Pick(current, "kept")


class TaskCertificate(NamedTuple):
    """The certificate of old task ``task`` after training task ``after`` (on its LID)."""

    after: int
    task: int
    tau: float
    certified_accuracy: float
    heldout_certified_accuracy: float
    lower_bound: float
    holds: bool


class SafeResult(NamedTuple):
    """matrix [T, T] test accuracy after each task; certificates of the old tasks after each task;
    lids: the LIDs trained in, in order (one per task boundary, more when re-centred); inside:
    whether the params after each later task lay in the LID they ended in (checked on the host);
    meta_history: lookahead meta-losses; picks: where each of ``lids`` came from
    (:meth:`Pick.describe`: ``bias@step``, or ``kept@step`` where a re-centring kept the current box)."""

    matrix: np.ndarray
    params: Params
    certificates: list[TaskCertificate]
    lids: list[lid.LID]
    inside: list[bool]
    taus: list[float]
    seconds: float
    meta_history: list[list[float]]
    picks: list[str]


def _samples(sequence: TaskSequence, t: int, part: str, count: int, rng) -> tuple[jax.Array, jax.Array]:
    x, y = getattr(sequence, f"x_{part}")[t], getattr(sequence, f"y_{part}")[t]
    rows = rng.permutation(len(y))[: min(count, len(y))]
    return jnp.asarray(x[rows]), jnp.asarray(y[rows])


def train_safely(spec: nets.Spec, sequence: TaskSequence, config: SafeConfig, init_params: Params | None = None,
        progress=None) -> SafeResult:
    """Trains ``spec`` through ``sequence``, every task after the first inside a certified LID of
    all earlier ones. ``progress(message)`` (optional) is called after each task."""
    check_network(spec, sequence)
    masks = [jnp.asarray(m) if sequence.scenario == "task" else None for m in sequence.output_mask]
    rng = np.random.default_rng(config.seed)
    key = jax.random.key(config.seed)
    params = nets.init(spec, jax.random.fold_in(key, 0)) if init_params is None else init_params
    cert = [_samples(sequence, t, "train", config.cert_samples, rng) for t in range(sequence.num_tasks)]
    heldout = [_samples(sequence, t, "test", config.heldout_samples, rng) for t in range(sequence.num_tasks)]
    lookahead = [_samples(sequence, t, "train", config.lookahead_samples, rng) for t in range(sequence.num_tasks)]
    started = time.perf_counter()
    matrix, held, picks, inside, taus, meta = [], [], [], [], [], []
    box, constraints, kept = None, (), []  # kept: the tasks certified (those learnt above 0, so tau > 0)
    for t in range(sequence.num_tasks):
        x, y = jnp.asarray(sequence.x_train[t]), jnp.asarray(sequence.y_train[t])
        parts = 1 if box is None else config.recentre
        for part, steps in enumerate(_split_steps(config.steps_per_task, parts)):
            part_key = jax.random.fold_in(key, 100 + t)
            if part > 0:
                part_key = jax.random.fold_in(part_key, part)
                picks.append(_recentred(spec, params, box, constraints, [heldout[j] for j in kept], config,
                                        lookahead[t], jax.random.fold_in(jax.random.fold_in(key, 400 + t), part),
                                        masks[t]))
                box = picks[-1].chosen
            params = projected_steps_jit(spec, params, None if box is None else box.domain, x, y, steps,
                                         config.learning_rate, config.batch, part_key, masks[t])
        if box is not None:
            inside.append(box.domain.contains(params))
            for j, constraint in zip(kept, constraints):
                c = certificates.certificate(spec, box.domain, constraint, *heldout[j])
                held.append(TaskCertificate(t, j, c.tau, c.certified_accuracy, c.heldout_certified_accuracy,
                                            c.lower_bound, c.holds and inside[-1]))
        matrix.append(evaluate(spec, params, sequence))
        taus.append(tau_rule(certificates.point_certified_accuracy(spec, params, *cert[t], competitors=masks[t]),
                             config.delta, config.tau_max))
        if progress is not None:
            progress(f"task {t}: accuracy {np.round(matrix[-1][: t + 1], 3).tolist()}")
        if t == sequence.num_tasks - 1:
            break
        kept = [j for j in range(t + 1) if taus[j] > 0]  # a task never learnt has nothing to keep
        constraints = tuple(certificates.Constraint(cert[j][0], cert[j][1], taus[j], competitors=masks[j])
                            for j in kept)
        if not constraints:
            box = None
            continue
        pick, history = _new_lid(spec, params, constraints, [heldout[j] for j in kept], config, lookahead[t + 1],
                                 jax.random.fold_in(key, 200 + t), jax.random.fold_in(key, 300 + t), masks[t + 1])
        picks.append(pick)
        box = pick.chosen
        meta += [history] if history is not None else []
    return SafeResult(np.stack(matrix), params, held, [p.chosen for p in picks], inside, taus,
                      time.perf_counter() - started, meta, [p.describe() for p in picks])
