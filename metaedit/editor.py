"""Training one editor for a whole accuracy/compliance trade-off.

For each step, a batch of the zoo's *training* networks is edited functionally by the graph
metanetwork and the edited networks run on a data batch (vmap over networks). Each network gets its
own trade-off weight ``lambda`` and requirement target, sampled per network and fed to the editor as
its condition ``[lambda, (target - low) / (high - low)]``. The loss is

    mean over networks of  lambda * excess_R(edited, target) + (1 - lambda) * JSD(f_theta(x) || f_theta'(x))

with straight-through masks. Training is an ``init`` / ``update`` pair (optax AdamW with gradient
clipping) run under ``lax.scan`` in chunks; between chunks the host shows a progress bar, appends
the chunk's mean metrics to ``metrics.jsonl`` and writes an orbax checkpoint, so a killed run
resumes and ends identical to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from metaedit import checkpoint, gmn, nets, requirements
from metaedit.datasets import Dataset
from metaedit.requirements import Batch, Requirement

EDITOR_FORMAT = "metaedit-editor/1"


class EditorTrainingError(ValueError):
    """Editor training was asked for something it cannot do."""


@dataclasses.dataclass(frozen=True)
class EditorTrainConfig:
    """Editor training settings; ``lambda_range`` bounds the sampled trade-off weights."""

    requirement: str
    steps: int = 1000
    chunk_steps: int = 100
    networks_per_step: int = 8
    data_batch: int = 256  # rows per step for the JSD (and the excess, unless requirement.whole_split)
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    clip_norm: float = 1.0
    lambda_range: tuple[float, float] = (0.0, 1.0)
    # trains each network against a target this much stricter (requirement units) than its condition
    # says, so a target met on training batches is still met on held-out data
    safety_margin: float = 0.0
    # the share of networks per step edited at exactly lambda = low end of lambda_range: the JSD's
    # gradient vanishes at the identity, so without these the editor learns to keep a network whole
    # at lambda = 0 only slowly
    endpoint_fraction: float = 0.25
    hidden: int = 32
    layers: int = 3
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "chunk_steps", "networks_per_step", "data_batch", "hidden", "layers"):
            if getattr(self, name) < 1:
                raise EditorTrainingError(f"EditorTrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        low, high = self.lambda_range
        if not 0.0 <= low <= high <= 1.0:
            raise EditorTrainingError(f"lambda_range must satisfy 0 <= low <= high <= 1, got {self.lambda_range}")
        if not 0.0 <= self.endpoint_fraction <= 1.0:
            raise EditorTrainingError(f"endpoint_fraction must lie in [0, 1], got {self.endpoint_fraction}")
        if not (np.isfinite(self.safety_margin) and self.safety_margin >= 0):
            raise EditorTrainingError(f"safety_margin must be finite and >= 0, got {self.safety_margin}")

    @property
    def num_chunks(self) -> int:
        return math.ceil(self.steps / self.chunk_steps)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


class EditorState(NamedTuple):
    """The editor's variables, the optimiser state and the global step."""

    variables: Any
    opt_state: Any
    step: Any


def optimizer(config: EditorTrainConfig) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(config.clip_norm),
                       optax.adamw(config.learning_rate, weight_decay=config.weight_decay))


def condition(requirement: Requirement, lam: jax.Array, target: jax.Array) -> jax.Array:
    """The editor's condition [..., 2]: lambda and the target scaled to [0, 1] over its range."""
    low, high = requirement.target_range
    return jnp.stack([lam, (target - low) / max(high - low, 1e-12)], axis=-1)


def check_lambda(lam) -> None:
    """Raises :class:`EditorTrainingError` unless every lambda lies in [0, 1]."""
    values = np.asarray(lam, dtype=np.float64)
    if not np.isfinite(values).all() or (values < 0).any() or (values > 1).any():
        raise EditorTrainingError(f"lambda must lie in [0, 1], got {values.tolist() if values.ndim else float(values)}")


def editing_loss(variables, gmn_config: gmn.GMNConfig, spec: nets.Spec, requirement: Requirement,
                 params: nets.Params, batch: Batch, lam: jax.Array, target: jax.Array, margin: float = 0.0,
                 requirement_batch: Batch | None = None):
    """Mean ``lambda * excess + (1 - lambda) * JSD`` over stacked params [N, ...]; returns (loss, metrics).

    The editor is conditioned on ``target`` [N]; the excess is measured on ``requirement_batch``
    (default: ``batch``, on which the JSD is measured) against ``target`` made stricter by ``margin``."""
    editor = gmn.Editor(gmn_config, variables)
    conditions = condition(requirement, lam, target)
    target = target + margin if requirement.higher_is_compliant else target - margin

    def one(p, c, l, t):
        edited = gmn.edit_one(editor, spec, p, c, hard=False)
        excess = requirement.excess(spec, edited, batch if requirement_batch is None else requirement_batch, t)
        divergence = requirements.jsd(nets.apply(spec, p, batch.x), nets.apply(spec, edited, batch.x))
        return l * excess + (1 - l) * divergence, excess, divergence

    losses, excess, divergence = jax.vmap(one)(params, conditions, lam, target)
    return losses.mean(), {"loss": losses.mean(), "excess": excess.mean(), "jsd": divergence.mean()}


class _Program:
    """The jitted chunk of one editor training run."""

    def __init__(self, spec, requirement, gmn_config, config: EditorTrainConfig, pool, data: Batch):
        tx = optimizer(config)
        low, high = requirement.target_range
        lam_low, lam_high = config.lambda_range
        pool_size = jax.tree.leaves(pool)[0].shape[0]
        rows = data.y.shape[0]
        whole = data if requirement.whole_split else None
        base = jax.random.key(config.seed)

        def step(state: EditorState, _):
            k_nets, k_rows, k_lam, k_target, k_end = jax.random.split(jax.random.fold_in(base, state.step), 5)
            chosen = jax.random.randint(k_nets, (config.networks_per_step,), 0, pool_size)
            picked = jax.tree.map(lambda leaf: leaf[chosen], pool)
            index = jax.random.randint(k_rows, (config.data_batch,), 0, rows)
            batch = Batch(data.x[index], data.y[index], data.s[index])
            lam = jax.random.uniform(k_lam, (config.networks_per_step,), minval=lam_low, maxval=lam_high)
            lam = jnp.where(jax.random.uniform(k_end, lam.shape) < config.endpoint_fraction, lam_low, lam)
            target = jax.random.uniform(k_target, (config.networks_per_step,), minval=low, maxval=high)
            grads, metrics = jax.grad(editing_loss, has_aux=True)(
                state.variables, gmn_config, spec, requirement, picked, batch, lam, target, config.safety_margin, whole)
            updates, opt_state = tx.update(grads, state.opt_state, state.variables)
            return EditorState(optax.apply_updates(state.variables, updates), opt_state, state.step + 1), metrics

        self.chunk = jax.jit(lambda state: jax.lax.scan(step, state, None, length=config.chunk_steps))
        self.init = lambda variables: EditorState(variables, tx.init(variables), jnp.zeros((), jnp.int32))


def train_editor(spec: nets.Spec, pool: nets.Params, dataset: Dataset, config: EditorTrainConfig,
                 workdir: str | Path | None = None, progress: bool = True, identity: dict | None = None,
                 stop_after_chunks: int | None = None) -> gmn.Editor | None:
    """Trains an editor on the stacked training networks ``pool`` [P, ...] of ``spec``.

    With ``workdir``: checkpoints every chunk, ``metrics.jsonl``, and resume of an unfinished run
    whose record matches (``identity`` adds keys to match, e.g. the zoo). ``stop_after_chunks``
    stops early and returns None (a controlled interruption, for tests).
    """
    requirement = requirements.get(config.requirement, dataset.feature_groups)
    nets.validate_params(spec, pool, batch_dims=1)
    if config.requirement in ("fairness", "demographic_parity") and dataset.s_train is None:
        raise EditorTrainingError(f"{config.requirement} needs a data set with a sensitive attribute; {dataset.name} has none")
    gmn_config = gmn.GMNConfig.for_specs([spec], hidden=config.hidden, layers=config.layers)
    sensitive = dataset.s_train if dataset.s_train is not None else np.zeros_like(dataset.y_train)
    data = Batch(jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train), jnp.asarray(sensitive))
    program = _Program(spec, requirement, gmn_config, config, jax.tree.map(jnp.asarray, pool), data)
    record = {"format": EDITOR_FORMAT, "spec": nets.spec_to_dict(spec), "config": config.to_dict(),
              "gmn": dataclasses.asdict(gmn_config), "dataset": dataset.source, **(identity or {})}
    state = program.init(gmn.init_editor(gmn_config, jax.random.key(config.seed)).variables)
    start = 0
    if workdir is not None and checkpoint.steps(workdir):
        step, saved = checkpoint.read_record(workdir)
        checkpoint.check_record(saved, record, f"{workdir} step {step}")
        state, _ = checkpoint.restore(workdir, state, step=step)
        start = step
    bar = tqdm(total=config.num_chunks * config.chunk_steps, initial=start * config.chunk_steps,
               desc=f"editor {config.requirement}", unit="step", disable=not progress)
    for chunk in range(start, config.num_chunks):
        state, metrics = program.chunk(state)
        done = chunk + 1
        summary = {"step": done * config.chunk_steps, **{k: float(np.mean(v)) for k, v in metrics.items()}}
        if workdir is not None:
            checkpoint.save(workdir, done, state, {**record, "chunks_done": done, "complete": done == config.num_chunks})
            with open(Path(workdir) / "metrics.jsonl", "a") as log:
                log.write(json.dumps(summary) + "\n")
        bar.update(config.chunk_steps)
        bar.set_postfix(loss=f"{summary['loss']:.4f}", jsd=f"{summary['jsd']:.4f}")
        if stop_after_chunks is not None and done - start >= stop_after_chunks and done < config.num_chunks:
            bar.close()
            return None
    bar.close()
    return gmn.Editor(gmn_config, state.variables)


def evaluation_loss(editor: gmn.Editor, spec: nets.Spec, requirement: Requirement, params: nets.Params,
                    batch: Batch, lam: float, target: float) -> dict[str, float]:
    """The training loss's terms for stacked ``params`` at one (lambda, target), with straight-through masks."""
    check_lambda(lam)
    n = jax.tree.leaves(params)[0].shape[0]
    _, metrics = jax.jit(functools.partial(editing_loss, gmn_config=editor.config, spec=spec, requirement=requirement))(
        editor.variables, params=params, batch=batch, lam=jnp.full((n,), lam), target=jnp.full((n,), target))
    return {k: float(v) for k, v in metrics.items()}


DEFAULT_TARGETS = {"fairness": 0.05, "demographic_parity": 0.05, "pruning": 0.9}
# a gap met on the training split misses epsilon on held-out data by about the test split's sampling
# noise; 0.02 is of that order for Adult's smallest (label, sex) cell
DEFAULT_SAFETY_MARGINS = {"fairness": 0.02, "demographic_parity": 0.02}


def default_safety_margin(requirement_name: str) -> float:
    """The ``safety_margin`` the CLI and the experiments train with: 0.02 for the gaps, else 0."""
    return DEFAULT_SAFETY_MARGINS.get(requirement_name, 0.0)


def default_target(requirement: Requirement, feature_groups=()) -> float:
    """The target the issue's experiments use: epsilon 0.05, sparsity 0.9, half the feature groups."""
    if requirement.name == "minimisation":
        return float(len(feature_groups) // 2)
    return DEFAULT_TARGETS[requirement.name]


def load_editor(workdir: str | Path) -> tuple[gmn.Editor, dict]:
    """The editor saved by a finished :func:`train_editor` run, and its record."""
    step, record = checkpoint.read_record(workdir)
    if record.get("format") != EDITOR_FORMAT:
        raise checkpoint.CheckpointError(f"{workdir} does not hold a metaedit editor")
    if not record.get("complete"):
        raise EditorTrainingError(f"the editor in {workdir} is unfinished ({record.get('chunks_done')} chunks); "
                                  f"run the same train-editor command again to resume")
    gmn_config = gmn.GMNConfig(**record["gmn"])
    config = EditorTrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in record["config"].items()})
    variables = jax.eval_shape(lambda: gmn.init_editor(gmn_config, jax.random.key(0)).variables)
    abstract = jax.eval_shape(lambda v: EditorState(v, optimizer(config).init(v), jnp.zeros((), jnp.int32)), variables)
    state, record = checkpoint.restore(workdir, abstract, step=step)
    return gmn.Editor(gmn_config, state.variables), record


def evaluate_editor(editor: gmn.Editor, spec: nets.Spec, requirement: Requirement, params: nets.Params,
                    dataset: Dataset, lambdas, target: float) -> list[dict]:
    """Hard edits of stacked held-out ``params`` at each lambda, measured on the test split.

    One dict per lambda: ``lambda``, ``target``, ``compliance_rate``, ``accuracy_change`` (mean, in
    accuracy units), ``jsd`` (mean), ``requirement_value`` (mean) and ``seconds_per_edit``.
    """
    for lam in lambdas:
        check_lambda(lam)
    x, y = jnp.asarray(dataset.x_test), jnp.asarray(dataset.y_test)
    s = jnp.asarray(dataset.s_test) if dataset.s_test is not None else jnp.zeros_like(y)
    batch = Batch(x, y, s)
    count = jax.tree.leaves(params)[0].shape[0]
    logits = jax.jit(jax.vmap(lambda p: nets.apply(spec, p, x)))
    before = logits(params)
    accuracy_before = (before.argmax(-1) == y).mean(-1)
    rows = []
    for lam in lambdas:
        cond = condition(requirement, jnp.asarray(lam, jnp.float32), jnp.asarray(target, jnp.float32))
        gmn.edit(editor, spec, params, cond)  # compile outside the timing
        started = time.perf_counter()
        edited = jax.block_until_ready(gmn.edit(editor, spec, params, cond))
        seconds = (time.perf_counter() - started) / count
        after = logits(edited)
        values = [requirement.measure(spec, jax.tree.map(lambda leaf, i=i: leaf[i], edited), batch) for i in range(count)]
        divergence = jax.vmap(requirements.jsd)(before, after)
        rows.append({
            "lambda": float(lam), "target": float(target),
            "compliance_rate": float(np.mean([requirement.complies(v, target) for v in values])),
            "accuracy_change": float(((after.argmax(-1) == y).mean(-1) - accuracy_before).mean()),
            "jsd": float(divergence.mean()), "requirement_value": float(np.mean(values)),
            "seconds_per_edit": seconds,
        })
    return rows
