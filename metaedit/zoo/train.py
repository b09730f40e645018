"""Training a zoo: every member by the same pure functions, the population under ``jit(vmap(...))``.

One member is trained by pure functions of its key, its hyperparameters and the data:
:func:`init_member`, :func:`train_chunk` (``chunk_steps`` steps of :func:`metaedit.training.make_step`
under ``lax.scan``) and :func:`train_one` (all chunks). A zoo vmaps them over the population axis.
Per-member diversity: init key, learning rate, weight decay, number of steps (later steps are
masked), init scale, the data subsample it sees (a window of the shuffled training set) and its
batch-order seed.

:func:`train_zoo` drives the chunks with :func:`metaedit.driver.run_chunks` (progress bar, metrics
log, a checkpoint after every chunk, resume) with the population axis sharded over all visible
devices, and evaluates every member at the end.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metaedit import checkpoint, driver, nets, training
from metaedit.datasets import Dataset
from metaedit.sharding import Placement, pad_population
from metaedit.training import Batch, TrainState
from metaedit.zoo.config import Hparams, ZooConfig, sample_hparams
from metaedit.zoo.store import Zoo, check_fits, identity, load_zoo, network_split, save_zoo


def member_key(seed: int, index: Any) -> jax.Array:
    """The init key of member ``index`` of a zoo seeded with ``seed``."""
    return jax.random.fold_in(jax.random.key(seed), index)


def optimizer(hparams: Hparams) -> optax.GradientTransformation:
    """AdamW with the member's (possibly traced) learning rate and weight decay."""
    return optax.adamw(hparams.learning_rate, weight_decay=hparams.weight_decay)


def init_member(spec: nets.Spec, key: jax.Array, hparams: Hparams) -> TrainState:
    """Fresh state of one member: params scaled by ``hparams.init_scale``, optimiser state, step 0."""
    return training.init_state(nets.init(spec, key, hparams.init_scale), optimizer(hparams))


def train_chunk(spec: nets.Spec, batch_size: int, chunk_steps: int, state: TrainState, hparams: Hparams,
                data: Batch) -> tuple[TrainState, jax.Array]:
    """Runs ``chunk_steps`` AdamW steps of one member; steps at or past ``num_steps`` change nothing.

    data: the training rows, x [n, ...] and y [n]. Returns the new state and the per-step training
    loss [chunk_steps] (NaN on masked steps). Batches depend on (batch_seed, global step) only, so
    any chunking gives the same result.
    """
    step = training.make_step(optimizer(hparams), training.batch_loss(spec))
    n = data.y.shape[0]
    base_key = jax.random.key(hparams.batch_seed)

    def body(state: TrainState, _):
        key = jax.random.fold_in(base_key, state.step)
        rows = (hparams.data_offset + jax.random.randint(key, (batch_size,), 0, hparams.subsample_size)) % n
        new, metrics = step(state, Batch(data.x[rows], data.y[rows]))
        active = state.step < hparams.num_steps
        keep = functools.partial(jax.tree.map, lambda a, b: jnp.where(active, a, b))
        return (TrainState(keep(new.params, state.params), keep(new.opt_state, state.opt_state), state.step + 1),
                jnp.where(active, metrics["loss"], jnp.nan))

    return jax.lax.scan(body, state, None, length=chunk_steps)


def train_one(spec: nets.Spec, config: ZooConfig, key: jax.Array, hparams: Hparams, data: Batch) -> TrainState:
    """Trains one member from scratch: a pure function of (key, hparams, data), jit- and vmap-able."""
    n_chunks = config.num_chunks(data.y.shape[0])
    chunk = functools.partial(train_chunk, spec, config.batch_size, config.chunk_steps, hparams=hparams, data=data)
    state, _ = jax.lax.scan(lambda s, _: (chunk(s)[0], None), init_member(spec, key, hparams), None, length=n_chunks)
    return state


def evaluate(spec: nets.Spec, params: nets.Params, x: Any, y: Any, batch: int | None = None) -> dict[str, np.ndarray]:
    """Per-member ``loss`` and ``accuracy`` [P] of stacked params on x [n, ...], y [n]."""
    members = nets.population_size(params)
    batch = batch or _eval_batch(spec, members, len(y))
    n = len(y)
    pad = -n % batch
    x = np.concatenate([np.asarray(x), np.zeros((pad,) + tuple(np.shape(x)[1:]), np.float32)])
    y = np.concatenate([np.asarray(y), np.zeros(pad, np.int32)])
    mask = np.arange(n + pad) < n
    shape = (-1, batch)
    loss_sum, correct = _evaluate_sums(
        spec, params, x.reshape(shape + x.shape[1:]), y.reshape(shape), mask.reshape(shape)
    )
    return {"loss": np.asarray(loss_sum) / n, "accuracy": np.asarray(correct) / n}


@functools.partial(jax.jit, static_argnums=0)
def _evaluate_sums(spec, params, xs, ys, masks):
    def body(carry, batch):
        x, y, mask = batch
        logits = jax.vmap(nets.apply, in_axes=(None, 0, None))(spec, params, x)  # [P, B, C]
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, y[None])
        hits = (logits.argmax(-1) == y[None]).astype(jnp.float32)
        return (carry[0] + (losses * mask).sum(-1), carry[1] + (hits * mask).sum(-1)), None

    zeros = jnp.zeros((nets.population_size(params),), jnp.float32)
    return jax.lax.scan(body, (zeros, zeros), (xs, ys, masks))[0]


def _eval_batch(spec: nets.Spec, members: int, n: int, budget_floats: int = 2**26) -> int:
    """An evaluation batch whose [P, B, widest activation] fits ``budget_floats``."""
    return int(max(1, min(n, budget_floats // (members * nets.widest_activation(spec)))))


class ZooProgram:
    """The jitted, sharded functions of one zoo run (built once, so each compiles once)."""

    def __init__(self, spec: nets.Spec, config: ZooConfig, placement: Placement):
        pop, rep = placement.population, placement.replicated
        self.init = jax.jit(
            jax.vmap(lambda index, hp: init_member(spec, member_key(config.seed, index), hp)),
            out_shardings=pop,
        )
        chunk = functools.partial(train_chunk, spec, config.batch_size, config.chunk_steps)
        self.chunk = jax.jit(
            jax.vmap(chunk, in_axes=(0, 0, None)),
            in_shardings=(pop, pop, rep),
            out_shardings=(pop, pop),
            donate_argnums=0,
        )


def train_zoo(
    spec: nets.Spec,
    dataset: Dataset,
    config: ZooConfig,
    workdir: str | Path | None = None,
    progress: bool = True,
    placement: Placement | None = None,
    stop_after_chunks: int | None = None,
) -> Zoo | None:
    """Trains (or resumes, or loads) a zoo of ``config.members`` networks of ``spec`` on ``dataset``.

    With ``workdir``, a checkpoint is written after every chunk and a finished zoo is saved there;
    an unfinished run in ``workdir`` with the same spec, config and data set is resumed, a finished
    one is loaded, and a different one is refused. ``stop_after_chunks`` stops early (returning
    None) after that many chunks in this call: a controlled interruption, for tests.
    """
    check_fits(spec, dataset)
    placement = placement or Placement()
    n = len(dataset.y_train)
    order = np.random.default_rng([config.seed, 0]).permutation(n)
    data = Batch(dataset.x_train[order], dataset.y_train[order])
    hparams = sample_hparams(config, n)
    padded = placement.padded_size(config.members)
    program = ZooProgram(spec, config, placement)
    hp_device = placement.put_population(pad_population(hparams, padded))
    data_device = placement.put_replicated(data)
    record = identity(spec, config, dataset.source)

    resume = driver.resume_point(workdir, record)
    if resume is not None and resume[1].get("complete"):
        return load_zoo(workdir)
    if resume is not None:
        start, state = resume[0], _restore_state(workdir, resume[0], spec, hparams, record, placement, padded)
    else:
        start, state = 0, program.init(placement.put_population(np.arange(padded)), hp_device)

    def advance(state):
        state, losses = program.chunk(state, hp_device, data_device)
        return state, {"loss": np.asarray(losses)[: config.members]}

    started = time.perf_counter()
    state, finished = driver.run_chunks(
        advance, state, chunks=config.num_chunks(n), chunk_steps=config.chunk_steps, start=start,
        desc=f"zoo {nets.describe(spec)} x{config.members}", progress=progress, workdir=workdir, record=record,
        save_tree=lambda s: _unpad((s, hparams), config.members), save_last=False,
        stop_after_chunks=stop_after_chunks)
    if not finished:
        return None
    train_seconds = time.perf_counter() - started

    params = _unpad(state.params, config.members)
    metrics = {}
    for part, (x, y) in {"train": (dataset.x_train, dataset.y_train), "test": (dataset.x_test, dataset.y_test)}.items():
        for name, values in evaluate(spec, params, x, y).items():
            metrics[f"{part}_{name}"] = values
    zoo = Zoo(spec=spec, params=jax.tree.map(np.asarray, params), hparams=hparams, metrics=metrics,
              split=network_split(config), config=config, dataset=dataset.source)
    if workdir is not None:
        save_zoo(workdir, zoo, config.num_chunks(n), extra={"train_seconds": train_seconds})
    return zoo


def _unpad(tree: Any, members: int) -> Any:
    return jax.tree.map(lambda leaf: leaf[:members], tree)


def _abstract_state(spec: nets.Spec, hparams: Hparams) -> TrainState:
    return jax.eval_shape(
        jax.vmap(lambda index, hp: init_member(spec, jax.random.key(0), hp)),
        jnp.zeros(len(hparams.learning_rate), jnp.int32), hparams,
    )


def _restore_state(workdir, step, spec, hparams, record, placement: Placement, padded: int) -> TrainState:
    """The training state saved at ``step``, padded and placed over the devices."""
    abstract = (_abstract_state(spec, hparams), hparams)
    if padded == len(hparams.learning_rate):
        abstract = placement.abstract_population(abstract)  # restore straight into the sharding
    (state, saved_hparams), _ = checkpoint.restore(workdir, abstract, step=step, expect=record)
    for name, saved, drawn in zip(Hparams._fields, saved_hparams, hparams):
        if not np.array_equal(np.asarray(saved), drawn):
            raise checkpoint.CheckpointError(f"checkpoint {workdir} step {step}: hparam {name} differs")
    if padded == len(hparams.learning_rate):
        return state
    return placement.put_population(pad_population(jax.tree.map(np.asarray, state), padded))
