"""Populations ("zoos") of networks of one architecture, trained together with ``jit(vmap(...))``.

One member is trained by pure functions of its key, its hyperparameters and the data:
:func:`init_member`, :func:`train_chunk` (``chunk_steps`` optimiser steps under ``lax.scan``) and
:func:`train_one` (all chunks). A zoo vmaps them over the population axis. Per-member diversity:
init key, learning rate, weight decay, number of steps (later steps are masked), init scale, the
data subsample it sees (a window of the shuffled training set) and its batch-order seed.

:func:`train_zoo` drives the chunks from the host: a progress bar, an orbax checkpoint after every
chunk (a killed run resumes from the last one and ends identical to an uninterrupted run), the
population axis sharded over all visible devices, and per-member metrics at the end.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from metaedit import checkpoint, nets
from metaedit.datasets import Dataset
from metaedit.sharding import Placement, pad_population

ZOO_FORMAT = "metaedit-zoo/1"


class ZooError(ValueError):
    """A zoo configuration, or a zoo directory, does not fit what was asked."""


@dataclasses.dataclass(frozen=True)
class ZooConfig:
    """How to train a zoo. Ranges are ``(low, high)``; learning rate and weight decay log-uniform.

    ``epochs`` sets the longest run: ``ceil(epochs * n_train / batch_size)`` steps; each member
    trains for a ``steps_fraction`` of that. ``subsample``: the fraction of the training set a
    member sees. ``network_split``: fractions of members in the train/val/test split of networks.
    """

    members: int = 64
    epochs: float = 2.0
    batch_size: int = 128
    chunk_steps: int = 100
    seed: int = 0
    learning_rate: tuple[float, float] = (1e-3, 1e-2)
    weight_decay: tuple[float, float] = (1e-5, 1e-3)
    steps_fraction: tuple[float, float] = (0.75, 1.0)
    init_scale: tuple[float, float] = (0.75, 1.25)
    subsample: tuple[float, float] = (0.5, 1.0)
    network_split: tuple[float, float, float] = (0.7, 0.15, 0.15)

    def __post_init__(self):
        for name in ("members", "batch_size", "chunk_steps"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ZooError(f"ZooConfig.{name} must be a positive integer, got {value!r}")
        if not self.epochs > 0:
            raise ZooError(f"ZooConfig.epochs must be > 0, got {self.epochs}")
        bounds = {
            "learning_rate": (0.0, math.inf, False),
            "weight_decay": (0.0, math.inf, False),
            "steps_fraction": (0.0, 1.0, True),
            "init_scale": (0.0, math.inf, False),
            "subsample": (0.0, 1.0, True),
        }
        for name, (low, high, closed_high) in bounds.items():
            lo, hi = getattr(self, name)
            if not (low < lo <= hi and (hi <= high if closed_high else hi < high)):
                raise ZooError(
                    f"ZooConfig.{name} must be a range (low, high) with {low} < low <= high"
                    f"{' <= ' + str(high) if closed_high else ''}, got {(lo, hi)}"
                )
        split = self.network_split
        if len(split) != 3 or min(split) < 0 or not math.isclose(sum(split), 1.0):
            raise ZooError(f"ZooConfig.network_split must be 3 fractions summing to 1, got {split}")

    def max_steps(self, n_train: int) -> int:
        """Steps of the longest-training member."""
        return max(1, math.ceil(self.epochs * n_train / self.batch_size))

    def num_chunks(self, n_train: int) -> int:
        return math.ceil(self.max_steps(n_train) / self.chunk_steps)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, record: dict) -> "ZooConfig":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in record.items()})


class Hparams(NamedTuple):
    """Per-member hyperparameters; each field is a scalar for one member or [P] for a zoo.

    subsample_size, data_offset: the member sees training rows ``(data_offset + r) % n`` for
    ``r < subsample_size``. batch_seed: seeds the member's batch draws.
    """

    learning_rate: Any
    weight_decay: Any
    num_steps: Any
    init_scale: Any
    subsample_size: Any
    data_offset: Any
    batch_seed: Any

    def member(self, index: int) -> "Hparams":
        """The scalar hyperparameters of member ``index`` of a stacked [P] set."""
        return Hparams(*(np.asarray(v)[index] for v in self))


class TrainData(NamedTuple):
    """Training rows: x [n, *input_shape] float32, y [n] int32."""

    x: Any
    y: Any


class MemberState(NamedTuple):
    """One member's training state (stacked along a leading [P] axis for a zoo)."""

    params: Any
    opt_state: Any
    step: Any


def sample_hparams(config: ZooConfig, n_train: int) -> Hparams:
    """Draws [P] hyperparameters from ``config``'s ranges with a numpy generator seeded by ``config.seed``."""
    rng = np.random.default_rng([config.seed, 1])
    p = config.members

    def log_uniform(low, high):
        return np.exp(rng.uniform(np.log(low), np.log(high), p)).astype(np.float32)

    max_steps = config.max_steps(n_train)
    return Hparams(
        learning_rate=log_uniform(*config.learning_rate),
        weight_decay=log_uniform(*config.weight_decay),
        num_steps=np.maximum(1, np.round(rng.uniform(*config.steps_fraction, p) * max_steps)).astype(np.int32),
        init_scale=rng.uniform(*config.init_scale, p).astype(np.float32),
        subsample_size=np.maximum(1, np.round(rng.uniform(*config.subsample, p) * n_train)).astype(np.int32),
        data_offset=rng.integers(0, n_train, p).astype(np.int32),
        batch_seed=rng.integers(0, 2**31 - 1, p).astype(np.int32),
    )


def member_key(seed: int, index: Any) -> jax.Array:
    """The init key of member ``index`` of a zoo seeded with ``seed``."""
    return jax.random.fold_in(jax.random.key(seed), index)


def optimizer(hparams: Hparams) -> optax.GradientTransformation:
    """AdamW with the member's (possibly traced) learning rate and weight decay."""
    return optax.adamw(hparams.learning_rate, weight_decay=hparams.weight_decay)


def cross_entropy(spec: nets.Spec, params: nets.Params, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of the network on x [B, ...], y [B]."""
    logits = nets.apply(spec, params, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def init_member(spec: nets.Spec, key: jax.Array, hparams: Hparams) -> MemberState:
    """Fresh state of one member: params scaled by ``hparams.init_scale``, optimiser state, step 0."""
    params = nets.init(spec, key, hparams.init_scale)
    return MemberState(params, optimizer(hparams).init(params), jnp.zeros((), jnp.int32))


def train_chunk(
    spec: nets.Spec, batch_size: int, chunk_steps: int, state: MemberState, hparams: Hparams,
    data: TrainData,
) -> tuple[MemberState, jax.Array]:
    """Runs ``chunk_steps`` AdamW steps of one member; steps at or past ``num_steps`` change nothing.

    Returns the new state and the per-step training loss [chunk_steps] (NaN on masked steps).
    Batches depend on (batch_seed, global step) only, so any chunking gives the same result.
    """
    tx = optimizer(hparams)
    n = data.y.shape[0]
    base_key = jax.random.key(hparams.batch_seed)

    def step(state: MemberState, _):
        key = jax.random.fold_in(base_key, state.step)
        rows = (hparams.data_offset + jax.random.randint(key, (batch_size,), 0, hparams.subsample_size)) % n
        loss, grads = jax.value_and_grad(cross_entropy, argnums=1)(spec, state.params, data.x[rows], data.y[rows])
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        active = state.step < hparams.num_steps
        keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(active, new, old))
        new_state = MemberState(keep(params, state.params), keep(opt_state, state.opt_state), state.step + 1)
        return new_state, jnp.where(active, loss, jnp.nan)

    return jax.lax.scan(step, state, None, length=chunk_steps)


def train_one(spec: nets.Spec, config: ZooConfig, key: jax.Array, hparams: Hparams, data: TrainData) -> MemberState:
    """Trains one member from scratch: a pure function of (key, hparams, data), jit- and vmap-able."""
    n_chunks = config.num_chunks(data.y.shape[0])
    chunk = functools.partial(train_chunk, spec, config.batch_size, config.chunk_steps, hparams=hparams, data=data)
    state, _ = jax.lax.scan(lambda s, _: (chunk(s)[0], None), init_member(spec, key, hparams), None, length=n_chunks)
    return state


def evaluate(spec: nets.Spec, params: nets.Params, x: Any, y: Any, batch: int | None = None) -> dict[str, np.ndarray]:
    """Per-member ``loss`` and ``accuracy`` [P] of stacked params on x [n, ...], y [n]."""
    members = jax.tree.leaves(params)[0].shape[0]
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

    members = jax.tree.leaves(params)[0].shape[0]
    zeros = jnp.zeros((members,), jnp.float32)
    return jax.lax.scan(body, (zeros, zeros), (xs, ys, masks))[0]


def _eval_batch(spec: nets.Spec, members: int, n: int, budget_floats: int = 2**26) -> int:
    """An evaluation batch whose [P, B, widest activation] fits ``budget_floats``."""
    if isinstance(spec, nets.MLPSpec):
        widest = max((int(np.prod(spec.input_shape)),) + tuple(spec.hidden))
    else:
        widest = int(np.prod(spec.input_shape[:-1])) * max(spec.channels + (spec.input_shape[-1],))
    return int(max(1, min(n, budget_floats // (members * widest))))


# --------------------------------------------------------------------------- the zoo


@dataclasses.dataclass(frozen=True, eq=False)
class Zoo:
    """A trained population: stacked params [P, ...] of one ``spec``, with hparams, metrics, split.

    metrics: ``train_loss``, ``train_accuracy``, ``test_loss``, ``test_accuracy``, each [P].
    split: ``train``/``val``/``test`` member indices (a split of the *networks*).
    dataset: the data set's ``source`` record (see :func:`metaedit.datasets.load_source`).
    """

    spec: nets.Spec
    params: nets.Params
    hparams: Hparams
    metrics: dict[str, np.ndarray]
    split: dict[str, np.ndarray]
    config: ZooConfig
    dataset: dict

    @property
    def members(self) -> int:
        return self.config.members

    def member(self, index: int) -> nets.Params:
        """Params of one member."""
        return jax.tree.map(lambda leaf: leaf[index], self.params)

    def subset(self, split: str) -> nets.Params:
        """Stacked params of the members in ``split`` ("train", "val" or "test")."""
        if split not in self.split:
            raise ZooError(f"unknown network split {split!r}; use train, val or test")
        return jax.tree.map(lambda leaf: leaf[self.split[split]], self.params)


def network_split(config: ZooConfig) -> dict[str, np.ndarray]:
    """A seeded split of member indices into train/val/test (all train when fewer than 3 members)."""
    p = config.members
    order = np.random.default_rng([config.seed, 2]).permutation(p)
    if p < 3:
        sizes = (p, 0, 0)
    else:
        n_val = max(1, round(config.network_split[1] * p))
        n_test = max(1, round(config.network_split[2] * p))
        sizes = (p - n_val - n_test, n_val, n_test)
    bounds = np.cumsum((0,) + sizes)
    return {
        name: np.sort(order[bounds[i]:bounds[i + 1]]).astype(np.int64)
        for i, name in enumerate(("train", "val", "test"))
    }


def check_fits(spec: nets.Spec, dataset: Dataset) -> None:
    """Raises :class:`ZooError` unless ``spec`` takes the data set's inputs and classes."""
    if tuple(spec.input_shape) != dataset.input_shape:
        raise ZooError(
            f"architecture {nets.describe(spec)} takes inputs {spec.input_shape}, "
            f"data set {dataset.name} has {dataset.input_shape}"
        )
    if spec.num_classes != dataset.num_classes:
        raise ZooError(
            f"architecture has {spec.num_classes} outputs, data set {dataset.name} has "
            f"{dataset.num_classes} classes"
        )


def _record(spec: nets.Spec, config: ZooConfig, source: dict) -> dict:
    """The identity of a zoo run: a checkpoint is resumed only if all of this matches."""
    return {
        "format": ZOO_FORMAT,
        "spec": nets.spec_to_dict(spec),
        "config": config.to_dict(),
        "dataset": source,
    }


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
    data = TrainData(dataset.x_train[order], dataset.y_train[order])
    hparams = sample_hparams(config, n)
    padded = placement.padded_size(config.members)
    program = ZooProgram(spec, config, placement)
    hp_device = placement.put_population(pad_population(hparams, padded))
    data_device = placement.put_replicated(data)
    identity = _record(spec, config, dataset.source)
    n_chunks = config.num_chunks(n)

    state, start = None, 0
    if workdir is not None and checkpoint.steps(workdir):
        step, record = checkpoint.read_record(workdir)
        checkpoint.check_record(record, identity, f"{workdir} step {step}")
        if record.get("complete"):
            return load_zoo(workdir)
        state = _restore_state(workdir, step, spec, hparams, identity, placement, padded)
        start = step
    if state is None:
        state = program.init(placement.put_population(np.arange(padded)), hp_device)

    bar = tqdm(total=n_chunks * config.chunk_steps, initial=start * config.chunk_steps,
               desc=f"zoo {nets.describe(spec)} x{config.members}", unit="step", disable=not progress)
    started = time.perf_counter()
    for chunk_index in range(start, n_chunks):
        state, losses = program.chunk(state, hp_device, data_device)
        done = chunk_index + 1
        if workdir is not None and done < n_chunks:
            checkpoint.save(workdir, done, _unpad((state, hparams), config.members),
                            {**identity, "chunks_done": done, "chunks": n_chunks, "complete": False})
        losses = np.asarray(losses)[: config.members]
        bar.update(config.chunk_steps)
        if np.isfinite(losses).any():
            bar.set_postfix(loss=f"{np.nanmean(losses):.4f}")
        if stop_after_chunks is not None and done - start >= stop_after_chunks and done < n_chunks:
            bar.close()
            return None
    bar.close()
    train_seconds = time.perf_counter() - started

    params = _unpad(state.params, config.members)
    metrics = {}
    for part, (x, y) in {"train": (dataset.x_train, dataset.y_train), "test": (dataset.x_test, dataset.y_test)}.items():
        for name, values in evaluate(spec, params, x, y).items():
            metrics[f"{part}_{name}"] = values
    zoo = Zoo(spec=spec, params=jax.tree.map(np.asarray, params), hparams=hparams, metrics=metrics,
              split=network_split(config), config=config, dataset=dataset.source)
    if workdir is not None:
        save_zoo(workdir, zoo, n_chunks, extra={"train_seconds": train_seconds})
    return zoo


def _unpad(tree: Any, members: int) -> Any:
    return jax.tree.map(lambda leaf: leaf[:members], tree)


def _abstract_state(spec: nets.Spec, hparams: Hparams) -> MemberState:
    return jax.eval_shape(
        jax.vmap(lambda index, hp: init_member(spec, jax.random.key(0), hp)),
        jnp.zeros(len(hparams.learning_rate), jnp.int32), hparams,
    )


def _restore_state(workdir, step, spec, hparams, identity, placement: Placement, padded: int) -> MemberState:
    """The training state saved at ``step``, padded and placed over the devices."""
    abstract = (_abstract_state(spec, hparams), hparams)
    if padded == len(hparams.learning_rate):
        abstract = placement.abstract_population(abstract)  # restore straight into the sharding
    (state, saved_hparams), _ = checkpoint.restore(workdir, abstract, step=step, expect=identity)
    for name, saved, drawn in zip(Hparams._fields, saved_hparams, hparams):
        if not np.array_equal(np.asarray(saved), drawn):
            raise checkpoint.CheckpointError(f"checkpoint {workdir} step {step}: hparam {name} differs")
    if padded == len(hparams.learning_rate):
        return state
    return placement.put_population(pad_population(jax.tree.map(np.asarray, state), padded))


def save_zoo(workdir: str | Path, zoo: Zoo, step: int, extra: dict | None = None) -> None:
    """Saves a finished zoo (params, hparams, metrics, network split) as checkpoint ``step``."""
    record = {
        **_record(zoo.spec, zoo.config, zoo.dataset),
        "complete": True,
        "members": zoo.members,
        "metrics": {k: np.asarray(v).tolist() for k, v in zoo.metrics.items()},
        "split": {k: v.tolist() for k, v in zoo.split.items()},
        **(extra or {}),
    }
    checkpoint.save(workdir, step, {"params": zoo.params, "hparams": zoo.hparams}, record)


def load_zoo(workdir: str | Path) -> Zoo:
    """Loads the finished zoo saved in ``workdir`` (params as host numpy arrays)."""
    step, record = checkpoint.read_record(workdir)
    if record.get("format") != ZOO_FORMAT:
        raise checkpoint.CheckpointError(f"{workdir} does not hold a metaedit zoo")
    if not record.get("complete"):
        raise ZooError(
            f"the zoo in {workdir} is unfinished ({record.get('chunks_done')} of "
            f"{record.get('chunks')} chunks); run the same 'metaedit zoo' command again to resume"
        )
    spec = nets.spec_from_dict(record["spec"])
    config = ZooConfig.from_dict(record["config"])
    members = config.members
    hp_abstract = Hparams(*(jax.ShapeDtypeStruct((members,), d) for d in
                            (jnp.float32, jnp.float32, jnp.int32, jnp.float32, jnp.int32, jnp.int32, jnp.int32)))
    params_abstract = jax.eval_shape(lambda: jax.vmap(lambda k: nets.init(spec, k))(jax.random.split(jax.random.key(0), members)))
    tree, record = checkpoint.restore(workdir, {"params": params_abstract, "hparams": hp_abstract}, step=step)
    to_host = functools.partial(jax.tree.map, np.asarray)
    return Zoo(
        spec=spec, params=to_host(tree["params"]), hparams=Hparams(*to_host(tuple(tree["hparams"]))),
        metrics={k: np.asarray(v, np.float32) for k, v in record["metrics"].items()},
        split={k: np.asarray(v, np.int64) for k, v in record["split"].items()},
        config=config, dataset=record["dataset"],
    )
