"""Continual-learning baselines: each trains a whole task sequence, vmapped over seeds under one jit.

:func:`run` trains ``len(seeds)`` networks side by side (``jax.vmap`` over per-seed initial params and
keys), the tasks in a ``lax.scan``, each task's ``steps_per_task`` Adam steps in an inner
``lax.scan`` (Adam's moments restart at every task), and records the accuracy matrix
``R[s, i, j]`` (accuracy on task j after task i). Batches are drawn with replacement from the current
task; in the task-incremental scenario every loss and prediction uses the task's output mask
(:mod:`certify.continual.tasks`).

Methods (``METHODS``; ``strength`` is lambda / c, ignored by methods that take none):

* ``naive``: plain fine-tuning on each task in turn.
* ``l2``: ``strength / 2 * ||theta - theta_prev||^2``, theta_prev the params after the previous task.
* ``ewc``: ``strength / 2 * sum F (theta - theta_prev)^2``, F the diagonal empirical Fisher (mean
  squared per-sample gradient of the loss at the true label, ``fisher_samples`` training samples of
  each task), summed over the tasks so far, anchored at the latest params (online EWC, gamma = 1).
* ``si``: the same quadratic with Zenke et al.'s path-integral importance
  ``Omega += max(0, w / (Delta^2 + xi))``, ``w = -sum_steps g_task * step``, xi = ``SI_DAMPING``.
* ``lwf``: learning without forgetting (Li & Hoiem, 2017): every step adds ``strength`` x the
  distillation loss ``T^2 CE(softmax(old / T), softmax(new / T))`` (T = ``LWF_TEMPERATURE``) between
  the network after the previous task (the teacher) and the current one, on the current task's
  batch, over the logits of the tasks seen so far (all of them in the domain- and class-incremental
  scenarios, the old tasks' heads in the task-incremental one). No memory.
* ``agem``: A-GEM; when the step's gradient g has ``g . g_ref < 0`` for the gradient g_ref of a
  ``batch``-sized sample of the episodic memory (past tasks), it is projected to
  ``g - (g . g_ref / g_ref . g_ref) g_ref``.
* ``replay``: experience replay; every step adds the loss of a ``batch``-sized sample of the memory
  (weight 1) to the current task's loss.

Default strengths (``Method.default_strength``) are starting points only: the useful range depends on
the data set and scenario (on Split MNIST-5k, domain-incremental, EWC helps from about 1e4 and SI
from about 10; on Split MNIST-1D both freeze the network well before that; class-incremental EWC
needs about 1e7 on Split digits, since the Fisher of not-yet-seen classes' head units is near zero),
so experiments should tune them.

``agem`` and ``replay`` keep ``memory_per_task`` training samples of each finished task (drawn
without replacement); experiments use two sizes, e.g. 10 and 50.
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from certify.continual import tasks
from certify.continual.tasks import ContinualError, TaskSequence
from metaedit import nets, training
from metaedit.training import Batch

SI_DAMPING = 1e-3
LWF_TEMPERATURE = 2.0


class Result(NamedTuple):
    """matrix: [S, T, T] accuracy matrices (``R[s, i, j]``, task j after task i); params: the final
    params, stacked [S, ...]; seconds: wall time of the training run (compilation excluded);
    compile_seconds: time spent compiling in this call (0.0 when a compiled run was reused)."""

    method: str
    seeds: tuple[int, ...]
    matrix: np.ndarray
    params: nets.Params
    seconds: float
    compile_seconds: float


class _Config(NamedTuple):
    """Static (hashable) settings of one compiled run."""

    spec: nets.Spec
    steps: int
    batch: int
    memory: int
    fisher_samples: int


class _Data(NamedTuple):
    """The sequence as padded device arrays: x_train [T, N, ...], y_train [T, N], n_train [T],
    x_test [T, M, ...], y_test / valid_test [T, M], mask [T, C] bool."""

    x_train: jax.Array
    y_train: jax.Array
    n_train: jax.Array
    x_test: jax.Array
    y_test: jax.Array
    valid_test: jax.Array
    mask: jax.Array


class _Ctx(NamedTuple):
    config: _Config
    data: _Data
    strength: jax.Array


class Method(NamedTuple):
    """A baseline as pure hooks over a method state (a dict pytree):

    init(params, ctx) -> state; grads(params, state, batch, key, t, ctx) -> (grads, task_grads) (the
    gradient the optimiser follows, and that of the current task's loss alone);
    after_step(state, old, new, task_grads, ctx) -> state; end_task(state, params, key, t, ctx) -> state.
    """

    description: str
    default_strength: float | None  # None: the method takes no strength
    uses_memory: bool
    init: Callable
    grads: Callable
    after_step: Callable
    end_task: Callable


# --------------------------------------------------------------------------- shared pieces


def _task_grads(params, batch, ctx):
    return jax.grad(training.batch_loss(ctx.config.spec))(params, batch)


def _task_batch(ctx: _Ctx, t, key) -> Batch:
    rows = jax.random.randint(key, (ctx.config.batch,), 0, ctx.data.n_train[t])
    mask = jnp.broadcast_to(ctx.data.mask[t], (ctx.config.batch, ctx.data.mask.shape[1]))
    return Batch(ctx.data.x_train[t, rows], ctx.data.y_train[t, rows], mask=mask)


def _draw_rows(key, count, n, size):
    """``size`` distinct row indices < n of a padded axis of length ``count`` (needs size <= n)."""
    u = jnp.where(jnp.arange(count) < n, jax.random.uniform(key, (count,)), 2.0)
    return jnp.argsort(u)[:size]


def _memory_batch(ctx: _Ctx, state, t, key) -> Batch:
    """``batch`` samples drawn uniformly from the memories of tasks 0..t-1 (task 0's when t == 0)."""
    k_task, k_row = jax.random.split(key)
    which = jax.random.randint(k_task, (ctx.config.batch,), 0, jnp.maximum(t, 1))
    rows = state["memory"][which, jax.random.randint(k_row, (ctx.config.batch,), 0, ctx.config.memory)]
    return Batch(ctx.data.x_train[which, rows], ctx.data.y_train[which, rows], mask=ctx.data.mask[which])


def _fill_memory(state, params, key, t, ctx):
    rows = _draw_rows(key, ctx.data.y_train.shape[1], ctx.data.n_train[t], ctx.config.memory)
    return {**state, "memory": state["memory"].at[t].set(rows)}


def _memory_init(params, ctx):
    return {"memory": jnp.zeros((ctx.data.y_train.shape[0], ctx.config.memory), jnp.int32)}


def _fisher(params, key, t, ctx):
    """Diagonal empirical Fisher of task t on up to ``fisher_samples`` of its training samples."""
    n_pad = ctx.data.y_train.shape[1]
    size = min(ctx.config.fisher_samples, n_pad)
    rows = _draw_rows(key, n_pad, ctx.data.n_train[t], size)
    weight = jnp.arange(size) < jnp.minimum(size, ctx.data.n_train[t])
    return training.empirical_fisher(ctx.config.spec, params, ctx.data.x_train[t, rows], ctx.data.y_train[t, rows],
                                     weight, ctx.data.mask[t])


def _no_state(params, ctx):
    return {}


def _unchanged(state, *args):
    return state


def _plain_grads(params, state, batch, key, t, ctx):
    g = _task_grads(params, batch, ctx)
    return g, g


# --------------------------------------------------------------------------- quadratic penalties


def _anchor_init(params, ctx):
    zeros = jax.tree.map(jnp.zeros_like, params)
    return {"anchor": params, "importance": zeros, "path": zeros}


def _penalised_grads(params, state, batch, key, t, ctx):
    """Task gradient plus that of ``strength / 2 * sum importance * (params - anchor)^2``."""
    g = _task_grads(params, batch, ctx)
    total = jax.tree.map(lambda gi, p, a, f: gi + ctx.strength * f * (p - a), g, params, state["anchor"],
                         state["importance"])
    return total, g


def _l2_end(state, params, key, t, ctx):
    return {**state, "anchor": params, "importance": jax.tree.map(jnp.ones_like, params)}


def _ewc_end(state, params, key, t, ctx):
    fisher = _fisher(params, key, t, ctx)
    return {**state, "anchor": params, "importance": jax.tree.map(jnp.add, state["importance"], fisher)}


def _si_step(state, old, new, task_grads, ctx):
    path = jax.tree.map(lambda w, g, a, b: w - g * (b - a), state["path"], task_grads, old, new)
    return {**state, "path": path}


def _si_end(state, params, key, t, ctx):
    omega = jax.tree.map(
        lambda f, w, p, a: f + jnp.maximum(w / ((p - a) ** 2 + SI_DAMPING), 0.0),
        state["importance"], state["path"], params, state["anchor"],
    )
    return {"anchor": params, "importance": omega, "path": jax.tree.map(jnp.zeros_like, params)}


# --------------------------------------------------------------------------- distillation


def _teacher(state, params, key, t, ctx):
    return {"teacher": params}


def _teacher_init(params, ctx):
    return {"teacher": params}


def _lwf_grads(params, state, batch, key, t, ctx):
    """Task gradient plus ``strength`` x that of the distillation loss on the batch (from task 1 on)."""
    g = _task_grads(params, batch, ctx)
    seen = (ctx.data.mask & (jnp.arange(ctx.data.mask.shape[0]) < t)[:, None]).any(0)  # [C] the old tasks' logits
    temperature = LWF_TEMPERATURE
    old = training.masked_logits(nets.apply(ctx.config.spec, state["teacher"], batch.x), seen) / temperature
    targets = jax.nn.softmax(old)

    def distillation(p):
        new = training.masked_logits(nets.apply(ctx.config.spec, p, batch.x), seen) / temperature
        return temperature ** 2 * optax.softmax_cross_entropy(new, targets).mean()

    gate = (t > 0).astype(jnp.float32) * ctx.strength
    return jax.tree.map(lambda a, b: a + gate * b, g, jax.grad(distillation)(params)), g


# --------------------------------------------------------------------------- episodic memory


def _replay_grads(params, state, batch, key, t, ctx):
    g = _task_grads(params, batch, ctx)
    g_memory = _task_grads(params, _memory_batch(ctx, state, t, key), ctx)
    gate = (t > 0).astype(jnp.float32)
    return jax.tree.map(lambda a, b: a + gate * b, g, g_memory), g


def _agem_grads(params, state, batch, key, t, ctx):
    g = _task_grads(params, batch, ctx)
    g_ref = _task_grads(params, _memory_batch(ctx, state, t, key), ctx)
    dot = sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)))
    norm = sum(jnp.vdot(b, b) for b in jax.tree.leaves(g_ref))
    scale = jnp.where((t > 0) & (dot < 0), dot / jnp.maximum(norm, 1e-12), 0.0)
    return jax.tree.map(lambda a, b: a - scale * b, g, g_ref), g


METHODS: dict[str, Method] = {
    "naive": Method("fine-tuning on each task in turn", None, False, _no_state, _plain_grads, _unchanged,
                    _unchanged),
    "l2": Method("L2 pull to the previous task's params", 1.0, False, _anchor_init, _penalised_grads,
                 _unchanged, _l2_end),
    "ewc": Method("EWC, diagonal empirical Fisher summed over tasks", 1e4, False, _anchor_init,
                  _penalised_grads, _unchanged, _ewc_end),
    "si": Method("synaptic intelligence (path-integral importance)", 1.0, False, _anchor_init,
                 _penalised_grads, _si_step, _si_end),
    "lwf": Method("learning without forgetting (distillation from the previous network)", 1.0, False,
                  _teacher_init, _lwf_grads, _unchanged, _teacher),
    "agem": Method("A-GEM gradient projection on an episodic memory", None, True, _memory_init, _agem_grads,
                   _unchanged, _fill_memory),
    "replay": Method("experience replay from an episodic memory", None, True, _memory_init, _replay_grads,
                     _unchanged, _fill_memory),
}


# --------------------------------------------------------------------------- training


def _train_one(method: Method, config: _Config, params, key, data: _Data, lr, strength):
    """Trains one network through every task; returns (final params, correct-count matrix [T, T])."""
    ctx = _Ctx(config, data, strength)
    optimiser = optax.adam(lr)

    def task(carry, t):
        params, state, key = carry
        key, k_steps, k_end = jax.random.split(key, 3)

        def step(inner, k):
            train_state, s = inner
            k_batch, k_method = jax.random.split(k)
            one = training.make_step(optimiser, gradients=lambda p, b: method.grads(p, s, b, k_method, t, ctx))
            new, g_task = one(train_state, _task_batch(ctx, t, k_batch))
            return (new, method.after_step(s, train_state.params, new.params, g_task, ctx)), None

        inner = (training.init_state(params, optimiser), state)
        (train_state, state), _ = jax.lax.scan(step, inner, jax.random.split(k_steps, config.steps))
        params = train_state.params
        state = method.end_task(state, params, k_end, t, ctx)
        correct = tasks.task_correct(config.spec, params, data.x_test, data.y_test, data.valid_test, data.mask)
        return (params, state, key), correct

    start = (params, method.init(params, ctx), key)
    (params, _, _), matrix = jax.lax.scan(task, start, jnp.arange(data.y_train.shape[0]))
    return params, matrix


_COMPILED: dict[Any, Any] = {}


def _compiled(method: Method, config: _Config, args) -> tuple[Any, float]:
    """The compiled vmapped run for these settings and argument shapes, kept for reuse (per process)."""
    signature = (method, config, jax.tree.structure(args),
                 tuple((a.shape, str(a.dtype)) for a in jax.tree.leaves(args)))
    if signature in _COMPILED:
        return _COMPILED[signature], 0.0
    started = time.perf_counter()

    def train(params, keys, data, lr, strength):
        one = lambda p, k: _train_one(method, config, p, k, data, lr, strength)  # noqa: E731
        return jax.vmap(one)(params, keys)

    executable = jax.jit(train).lower(*args).compile()
    _COMPILED[signature] = executable
    return executable, time.perf_counter() - started


def _device_data(sequence: TaskSequence) -> _Data:
    x_train, y_train, valid_train = tasks.stacked(sequence, "train")
    x_test, y_test, valid_test = tasks.stacked(sequence, "test")
    return _Data(jnp.asarray(x_train), jnp.asarray(y_train), jnp.asarray(valid_train.sum(1), jnp.int32),
                 jnp.asarray(x_test), jnp.asarray(y_test), jnp.asarray(valid_test),
                 jnp.asarray(sequence.output_mask))


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ContinualError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def run(
    method: str,
    spec: nets.Spec,
    sequence: TaskSequence,
    seeds: Sequence[int] = (0,),
    *,
    steps_per_task: int = 300,
    batch: int = 64,
    lr: float = 1e-3,
    strength: float | None = None,
    memory_per_task: int = 50,
    fisher_samples: int = 256,
    init_params: nets.Params | None = None,
) -> Result:
    """Trains one network per seed through ``sequence`` with ``method`` (a key of ``METHODS``).

    Seed s draws the initial params (``nets.init`` with the first half of ``jax.random.key(s)``,
    unless ``init_params`` [S, ...] is given) and the batches (the second half), so runs are
    deterministic given seeds and methods compared at the same seeds start from the same networks.
    ``strength`` defaults to the method's ``default_strength``; ``memory_per_task`` is used by
    ``agem`` and ``replay`` only. Raises :class:`ContinualError` for an unknown method, bad sizes,
    a negative strength, or a network that does not fit the sequence.
    """
    if method not in METHODS:
        raise ContinualError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    hooks = METHODS[method]
    steps = _positive_int("steps_per_task", steps_per_task)
    batch = _positive_int("batch", batch)
    fisher_samples = _positive_int("fisher_samples", fisher_samples)
    if not (isinstance(lr, (int, float, np.floating)) and np.isfinite(lr) and lr > 0):
        raise ContinualError(f"lr must be a positive number, got {lr!r}")
    strength = hooks.default_strength if strength is None else strength
    strength = 0.0 if strength is None else strength
    if not (isinstance(strength, (int, float, np.floating)) and np.isfinite(strength) and strength >= 0):
        raise ContinualError(f"strength must be a finite number >= 0, got {strength!r}")
    memory = 1
    if hooks.uses_memory:
        memory = _positive_int(f"memory_per_task (for {method})", memory_per_task)
        smallest = min(len(y) for y in sequence.y_train)
        if memory > smallest:
            raise ContinualError(
                f"memory_per_task={memory} exceeds the smallest task's {smallest} training samples"
            )
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ContinualError("seeds is empty: give at least one seed")
    tasks.check_network(spec, sequence)

    keys = jnp.stack([jax.random.split(jax.random.key(s)) for s in seeds])
    if init_params is None:
        init_params = jax.vmap(lambda k: nets.init(spec, k))(keys[:, 0])
    else:
        nets.check_shapes(spec, init_params, batch_dims=1)
        count = nets.population_size(init_params)
        if count != len(seeds):
            raise ContinualError(f"init_params holds {count} networks for {len(seeds)} seeds")
        init_params = jax.tree.map(jnp.asarray, init_params)
    config = _Config(spec, steps, batch, memory, fisher_samples)
    args = (init_params, keys[:, 1], _device_data(sequence), jnp.float32(lr), jnp.float32(strength))
    executable, compile_seconds = _compiled(hooks, config, args)
    started = time.perf_counter()
    params, correct = jax.block_until_ready(executable(*args))
    seconds = time.perf_counter() - started
    matrix = np.asarray(correct) / np.array([len(y) for y in sequence.y_test])
    return Result(method, seeds, matrix, jax.tree.map(np.asarray, params), seconds, compile_seconds)
