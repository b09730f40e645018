"""Machinery the requirements' baselines share: fine-tuning under fixed masks, fresh networks, timing.

Each requirement lists its own baselines (:meth:`metaedit.requirements.Requirement.baselines`);
they are built from these pieces. Every compiled function here is jitted at module level (the
network's architecture, the step count and the penalty are static), so a second call with the same
settings reuses the compiled program and :func:`timed` measures warm runs only, as the editor's
timings are.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metaedit import nets, training
from metaedit.datasets import Dataset
from metaedit.training import Batch


class BaselineResult(NamedTuple):
    """params: edited stacked params (None for prediction-only methods); predictions: [P, n_test]
    hard test predictions; seconds_per_edit: warm wall time per network (compilation excluded)."""

    params: Any
    predictions: np.ndarray
    seconds_per_edit: float


class Baseline(NamedTuple):
    """A comparison method: ``run(spec, params [P, ...], dataset, strength, target) -> BaselineResult``
    (``target``: the requirement's target, which a method that aims at one uses), its
    family ("post-processing", "removal", "fine-tuning" or "retraining"), what its strength is
    (None: it takes none) and its default strength (None: the requirement's target)."""

    run: Callable[..., BaselineResult]
    family: str
    strength: str | None = None
    default_strength: float | None = None


def split_batch(dataset: Dataset, part: str) -> Batch:
    """The ``part`` ("train" or "test") split as a device :class:`Batch` (zeros where the data set
    has no sensitive attribute)."""
    y = jnp.asarray(getattr(dataset, f"y_{part}"))
    sensitive = getattr(dataset, f"s_{part}")
    return Batch(jnp.asarray(getattr(dataset, f"x_{part}")), y,
                 jnp.asarray(sensitive) if sensitive is not None else jnp.zeros_like(y))


@functools.partial(jax.jit, static_argnames=("spec", "steps", "batch", "penalty"))
def _finetune(spec, params, masks, data: Batch, fixed: Batch | None, key, learning_rate, weight, threshold,
              steps: int, batch: int, penalty: Callable | None):
    tx = optax.adamw(learning_rate)
    n = data.y.shape[0]

    def loss(q, rows, m):
        q = jax.tree.map(jnp.multiply, q, m)
        value = training.cross_entropy(spec, q, data.x[rows], data.y[rows])
        if penalty is not None:
            on = fixed if fixed is not None else Batch(data.x[rows], data.y[rows], data.s[rows])
            value = value + weight * jax.nn.relu(penalty(spec, q, on) - threshold)
        return value

    def one(p, m, k):
        step = training.make_step(tx, lambda q, rows: loss(q, rows, m))
        body = lambda state, kk: (step(state, jax.random.randint(kk, (batch,), 0, n))[0], None)  # noqa: E731
        state, _ = jax.lax.scan(body, training.init_state(jax.tree.map(jnp.multiply, p, m), tx),
                                jax.random.split(k, steps))
        return jax.tree.map(jnp.multiply, state.params, m)

    return jax.vmap(one)(params, masks, jax.random.split(key, nets.population_size(params)))


def finetune(spec: nets.Spec, params: nets.Params, masks: nets.Params, dataset: Dataset, steps: int = 200,
             learning_rate: float = 1e-3, batch: int = 128, penalty: Callable | None = None, weight: float = 1.0,
             threshold: float = 0.0, penalty_rows: int | None = None, seed: int = 0) -> nets.Params:
    """AdamW fine-tuning of every network of ``params`` [P, ...] (vmapped) with ``masks`` held fixed,
    optionally adding ``weight * relu(penalty(spec, params, batch) - threshold)``, measured on the
    minibatch or, with ``penalty_rows``, on a fixed random subset of that many training rows.
    ``penalty`` must be hashable (a module-level function or a requirement's method). Returns the
    masked, fine-tuned params."""
    data = split_batch(dataset, "train")
    fixed = None
    if penalty is not None and penalty_rows is not None:
        subset = np.random.default_rng(seed).permutation(len(dataset.y_train))[:penalty_rows]
        fixed = jax.tree.map(lambda a: a[subset], data)
    return _finetune(spec, params, masks, data, fixed, jax.random.key(seed), learning_rate, weight, threshold,
                     steps=steps, batch=batch, penalty=penalty)


@functools.partial(jax.jit, static_argnums=0)
def _fresh(spec: nets.Spec, keys: jax.Array) -> nets.Params:
    return jax.vmap(lambda k: nets.init(spec, k))(keys)


def fresh(spec: nets.Spec, params: nets.Params, seed: int = 1) -> nets.Params:
    """Newly initialised networks, one per network in ``params`` [P, ...] (for retraining baselines)."""
    return _fresh(spec, jax.random.split(jax.random.key(seed), nets.population_size(params)))


@functools.partial(jax.jit, static_argnums=0)
def _predictions(spec: nets.Spec, params: nets.Params, x: jax.Array) -> jax.Array:
    return jax.vmap(lambda p: nets.apply(spec, p, x).argmax(-1))(params)


def predict(spec: nets.Spec, params: nets.Params, x: Any) -> np.ndarray:
    """Hard predictions [P, n] of stacked networks on x [n, ...]."""
    return np.asarray(_predictions(spec, params, jnp.asarray(x)))


def warm_seconds(run: Callable[[], Any], networks: int) -> tuple[Any, float]:
    """Runs ``run()`` once to compile (and waits for it: JAX dispatches asynchronously), then times a
    second, warm run: (its result, seconds per network of ``networks``)."""
    jax.block_until_ready(run())
    started = time.perf_counter()
    result = jax.block_until_ready(run())
    return result, (time.perf_counter() - started) / networks


def timed(spec: nets.Spec, params: nets.Params, dataset: Dataset, make: Callable[[], nets.Params]) -> BaselineResult:
    """``make()`` timed warm (:func:`warm_seconds`); predictions on the test split."""
    edited, seconds = warm_seconds(make, nets.population_size(params))
    return BaselineResult(edited, predict(spec, edited, dataset.x_test), seconds)


def masked(spec: nets.Spec, params: nets.Params, dataset: Dataset, make_masks: Callable[[], nets.Params],
           finetune_steps: int) -> BaselineResult:
    """The networks under ``make_masks()``, fine-tuned with the masks held fixed when asked; timed."""
    def make():
        masks = make_masks()
        if finetune_steps:
            return finetune(spec, params, masks, dataset, finetune_steps)
        return jax.tree.map(jnp.multiply, params, masks)
    return timed(spec, params, dataset, make)
