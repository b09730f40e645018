"""Training one editor for a whole accuracy/compliance trade-off.

For each step, a batch of the zoo's *training* networks is edited functionally by the graph
metanetwork and the edited networks run on a data batch (vmap over networks). Each network gets its
own trade-off weight ``lambda`` and requirement target, sampled per network and fed to the editor as
its condition ``[lambda, (target - low) / (high - low)]``. The loss is

    mean over networks of  lambda * excess_R(edited, target) + (1 - lambda) * JSD(f_theta(x) || f_theta'(x))

with straight-through masks. Each step is :func:`metaedit.training.make_step` (AdamW with gradient
clipping); chunks of steps run under ``lax.scan`` and :func:`metaedit.driver.run_chunks` drives
them (progress bar, ``metrics.jsonl``, a checkpoint per chunk, resume: a killed run resumes and
ends identical to an uninterrupted one). With validation networks, each chunk also logs the loss
terms on them at lambda 0.5 and the requirement's default target.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metaedit import baselines, checkpoint, driver, gmn, nets, options, requirements, training
from metaedit.datasets import Dataset
from metaedit.options import option
from metaedit.probe import stratified_batch
from metaedit.requirements import Requirement
from metaedit.training import Batch, TrainState

EDITOR_FORMAT = "metaedit-editor/4"  # /1, /2: earlier metanetworks and checkpoint trees, no longer read
# /3: one keep-logit per edge; the same parameters and edits as /4 where every edge has one weight (MLPs)
READABLE_OLDER = "metaedit-editor/3"


class EditorTrainingError(ValueError):
    """Editor training was asked for something it cannot do."""


@dataclasses.dataclass(frozen=True)
class EditorTrainConfig:
    """Editor training settings."""

    requirement: str = option("pruning", "the requirement the editor learns to meet",
                              choices=requirements.NAMES)
    steps: int = option(3000, "training steps")
    chunk_steps: int = option(100, "steps between checkpoints (and progress updates)")
    networks_per_step: int = option(8, "training networks edited per step")
    data_batch: int = option(256, "rows per step for the JSD (and the excess, unless the requirement is "
                                  "measured on a fixed subset of the training split: the gaps)")
    requirement_rows: int = option(8192, "training rows a gap requirement is measured on, stratified over the "
                                         "(group, label) cells so that small cells are kept whole")
    probe: int = option(0, "training rows whose forward pass gives the editor its data-aware node and graph "
                             "features (0: a weight-only editor, the default: it met the gaps more often on "
                             "held-out networks, README ablation)")
    collapse_penalty: float = option(10.0, "weight of the penalty on an edit that takes more than half of a "
                                          "class's predictions away (no edit may pass by predicting one class)")
    learning_rate: float = option(1e-3, "AdamW learning rate")
    weight_decay: float = option(1e-4, "AdamW weight decay")
    clip_norm: float = option(1.0, "gradient clipping (global norm)")
    lambda_range: tuple[float, float] = option((0.0, 1.0), "range of the sampled trade-off weights",
                                               metavar=("LOW", "HIGH"))
    safety_margin: float | None = option(None, "train against a target this much stricter than the condition "
                                         "states (default: the requirement's own, 0.02 for the fairness gaps, else 0)")
    hidden: int = option(32, "the editor's node width")
    edge_hidden: int = option(8, "the editor's edge width")
    layers: int = option(3, "message-passing rounds")
    messages: str = option("weights", "what a round passes between neurons: 'weights' (weight-weighted means of the "
                                      "neighbours' projections, matmuls over the layers; no edge state) or 'edges' "
                                      "(each edge keeps a state, updated every round; about 4 times slower)",
                           choices=gmn.MESSAGES)
    bilinear: int = option(0, "rank of the bilinear term of each weight's residual (0: none)")
    magnitude: bool = option(False, "add to each weight's keep-logit a learnt multiple of its standardised "
                             "log-magnitude (masks that can follow magnitudes, per conv tap)")
    budget: bool = option(False, "pruning only: each edit removes exactly the share lambda * target of a network's "
                                 "weights that score lowest (score: the keep-logit plus the standardised "
                                 "log-magnitude), so it complies by construction and is trained on the JSD alone")
    rescale: float = option(1.0, "augment each training network by rescaling its hidden neurons (incoming "
                            "weights times c, outgoing divided by c; c log-uniform in [1/RESCALE, RESCALE]): "
                            "the same function with other weights (1: off)")
    monotone: float = option(0.0, "weight of the penalty on a front that is not monotone: each network is also "
                                  "edited at a larger lambda, whose smooth requirement value may not be worse")
    keep: str = option("last", "the editor kept with validation networks: 'last' (the final step) or 'best' (the "
                               "chunk with the lowest validation loss at lambda 0.5, or 1 for a budgeted editor; guards "
                               "against a late unstable step, but that loss does not rank the whole front)",
                       choices=("last", "best"))
    seed: int = option(0, "seeds the editor's initialisation and the sampling of networks, rows and lambdas")

    def __post_init__(self):
        for name in ("steps", "chunk_steps", "networks_per_step", "data_batch", "requirement_rows", "hidden",
                     "edge_hidden", "layers"):
            if getattr(self, name) < 1:
                raise EditorTrainingError(f"EditorTrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.rescale < 1:
            raise EditorTrainingError(f"EditorTrainConfig.rescale must be >= 1, got {self.rescale}")
        if self.probe < 0 or self.collapse_penalty < 0 or self.seed < 0 or self.bilinear < 0 or self.monotone < 0:
            raise EditorTrainingError("EditorTrainConfig.probe, collapse_penalty, bilinear, monotone and seed must be >= 0")
        low, high = self.lambda_range
        if not 0.0 <= low <= high <= 1.0:
            raise EditorTrainingError(f"lambda_range must satisfy 0 <= low <= high <= 1, got {self.lambda_range}")
        if self.safety_margin is not None and not (np.isfinite(self.safety_margin) and self.safety_margin >= 0):
            raise EditorTrainingError(f"safety_margin must be finite and >= 0, got {self.safety_margin}")

    @property
    def num_chunks(self) -> int:
        return math.ceil(self.steps / self.chunk_steps)

    def margin(self, requirement: Requirement) -> float:
        """The safety margin in effect: the configured one, or the requirement's default."""
        return requirement.safety_margin if self.safety_margin is None else self.safety_margin


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


def collapse(before: jax.Array, after: jax.Array) -> jax.Array:
    """How far an edit goes towards predicting fewer classes: ``sum_c relu(share_c / 2 - share'_c)``
    with ``share_c`` the mean predicted probability of class c before the edit (logits [n, C]).
    (Hard shares with a straight-through gradient were tried: once a network collapsed, their
    gradient could not bring it back, and training stuck in collapse.)"""
    share_before = jax.nn.softmax(before).mean(0)
    share_after = jax.nn.softmax(after).mean(0)
    return jax.nn.relu(share_before / 2 - share_after).sum()


def editing_loss(variables, probe: Batch | None, gmn_config: gmn.GMNConfig, spec: nets.Spec,
                 requirement: Requirement, params: nets.Params, batch: Batch, lam: jax.Array, target: jax.Array,
                 margin: float = 0.0, requirement_batch: Batch | None = None, collapse_penalty: float = 0.0,
                 monotone: float = 0.0, further: jax.Array | None = None):
    """Mean ``lambda * excess + (1 - lambda) * JSD + collapse_penalty * collapse`` over stacked
    params [N, ...]; returns (loss, metrics). With ``monotone`` > 0, each network is also edited at
    lambda + ``further`` [N] (clipped to 1) and ``monotone * relu(worse)`` is added, ``worse`` how
    much the requirement's smooth value is worse there than at lambda.

    The editor (``variables``, reading node features on ``probe``) is conditioned on ``target`` [N];
    the excess is measured on ``requirement_batch`` (default: ``batch``, on which the JSD and the
    collapse are measured) against ``target`` made stricter by ``margin``."""
    editor = gmn.Editor(gmn_config, variables, probe)
    conditions = condition(requirement, lam, target)
    further = jnp.zeros_like(lam) if further is None else further
    later = condition(requirement, jnp.minimum(lam + further, 1.0), target)
    target = target + margin if requirement.higher_is_compliant else target - margin
    measured = batch if requirement_batch is None else requirement_batch

    def one(p, c, l, t, c_later):
        edited = gmn.edit_one(editor, spec, p, c, hard=False)
        excess = requirement.excess(spec, edited, measured, t)
        before, after = nets.apply(spec, p, batch.x), nets.apply(spec, edited, batch.x)
        divergence, collapsing = requirements.jsd(before, after), collapse(before, after)
        worse = jnp.zeros(())
        if monotone:
            moved = gmn.edit_one(editor, spec, p, c_later, hard=False)
            # every requirement's penalty is lower when more compliant
            worse = jax.nn.relu(requirement.penalty(spec, moved, measured) - requirement.penalty(spec, edited, measured))
        # a budgeted editor meets the target by construction: it learns to keep the function only
        trade_off = divergence if gmn_config.budget is not None else l * excess + (1 - l) * divergence
        loss = trade_off + collapse_penalty * collapsing + monotone * worse
        return loss, excess, divergence, collapsing, worse

    losses, excess, divergence, collapsing, worse = jax.vmap(one)(params, conditions, lam, target, later)
    return losses.mean(), {"loss": losses.mean(), "excess": excess.mean(), "jsd": divergence.mean(),
                           "collapse": collapsing.mean(), "nonmonotone": worse.mean()}


_loss_terms = jax.jit(editing_loss, static_argnums=(2, 3, 4, 9))


def evaluation_loss(editor: gmn.Editor, spec: nets.Spec, requirement: Requirement, params: nets.Params,
                    batch: Batch, lam: float, target: float) -> dict[str, float]:
    """The training loss's terms for stacked ``params`` at one (lambda, target), with straight-through masks."""
    check_lambda(lam)
    n = nets.population_size(params)
    _, metrics = _loss_terms(editor.variables, editor.probe, editor.config, spec, requirement, params, batch,
                             jnp.full((n,), lam, jnp.float32), jnp.full((n,), target, jnp.float32), 0.0)
    return {k: float(v) for k, v in metrics.items()}


def _chunk_program(specs: tuple, requirement, gmn_config, config: EditorTrainConfig, pools: tuple, data: Batch,
                   probe: Batch | None, measured: Batch | None):
    """``(init, chunk)``: the editor's starting state and one jitted chunk of training steps. Each
    step draws networks of every architecture of ``specs`` from its pool (``networks_per_step``
    shared among them) and averages the architectures' losses."""
    tx = optimizer(config)
    low, high = requirement.target_range
    lam_low, lam_high = config.lambda_range
    margin = config.margin(requirement)
    base = jax.random.key(config.seed)
    per_spec = max(1, config.networks_per_step // len(specs))

    def loss(variables, b):
        picked, rows, lam, target, further = b
        terms = [editing_loss(variables, probe, gmn_config, spec, requirement, p, rows, lam[i], target[i], margin,
                              measured, config.collapse_penalty, config.monotone, further[i])
                 for i, (spec, p) in enumerate(zip(specs, picked))]
        metrics = jax.tree.map(lambda *values: sum(values) / len(values), *[m for _, m in terms])
        return sum(value for value, _ in terms) / len(terms), metrics

    step = training.make_step(tx, loss, has_aux=True)

    def body(state: TrainState, _):
        k_nets, k_rows, k_lam, k_target, k_scale, k_further = jax.random.split(jax.random.fold_in(base, state.step), 6)
        picked = []
        for i, (spec, pool) in enumerate(zip(specs, pools)):
            chosen = jax.random.randint(jax.random.fold_in(k_nets, i), (per_spec,), 0, nets.population_size(pool))
            members = jax.tree.map(lambda leaf: leaf[chosen], pool)
            if config.rescale > 1:
                members = jax.vmap(lambda p, k, spec=spec: nets.rescale(spec, p, k, config.rescale))(
                    members, jax.random.split(jax.random.fold_in(k_scale, i), per_spec))
            picked.append(members)
        rows = jax.random.randint(k_rows, (config.data_batch,), 0, data.y.shape[0])
        lam = jax.random.uniform(k_lam, (len(specs), per_spec), minval=lam_low, maxval=lam_high)
        target = jax.random.uniform(k_target, (len(specs), per_spec), minval=low, maxval=high)
        further = jax.random.uniform(k_further, (len(specs), per_spec), maxval=0.3)
        return step(state, (picked, jax.tree.map(lambda a: a[rows], data), lam, target, further))

    chunk = jax.jit(lambda state: jax.lax.scan(body, state, None, length=config.chunk_steps))
    return (lambda variables: training.init_state(variables, tx)), chunk


def _as_tuple(value, single) -> tuple:
    return (value,) if isinstance(value, single) else tuple(value)


def train_editor(spec: nets.Spec | Sequence[nets.Spec], pool: nets.Params | Sequence[nets.Params], dataset: Dataset,
                 config: EditorTrainConfig, workdir: str | Path | None = None, progress: bool = True,
                 identity: dict | None = None, stop_after_chunks: int | None = None,
                 validation: nets.Params | Sequence[nets.Params] | None = None) -> gmn.Editor | None:
    """Trains an editor on the stacked training networks ``pool`` [P, ...] of ``spec``, or on
    several architectures at once: ``spec`` a sequence of specs and ``pool`` (and ``validation``)
    the matching sequence of stacked populations (a mixed zoo); the editor then reads every
    architecture up to the widest input, output and depth among them.

    With ``workdir``: checkpoints every chunk, ``metrics.jsonl``, and resume of an unfinished run
    whose record matches (``identity`` adds keys to match, e.g. the zoo). ``validation`` (stacked
    networks never trained on) adds their loss terms to every chunk's metrics; with
    ``config.keep`` "best" the editor returned (and loaded by :func:`load_editor`) is the one after
    the chunk with the lowest validation loss (at lambda 0.5, 1 for a budgeted editor, and the
    default target), else the last. ``stop_after_chunks`` stops early and returns None (a
    controlled interruption, for tests).
    """
    specs = _as_tuple(spec, (nets.MLPSpec, nets.CNNSpec))
    pools = _as_tuple(pool, dict)
    if len(specs) != len(pools) or not specs:
        raise EditorTrainingError(f"{len(specs)} architectures but {len(pools)} populations; give one per architecture")
    validations = None if validation is None else _as_tuple(validation, dict)
    if validations is not None and len(validations) != len(specs):
        raise EditorTrainingError(f"{len(specs)} architectures but {len(validations)} validation populations")
    if len({s.input_shape for s in specs}) != 1:
        raise EditorTrainingError("the architectures of one editor must read the same inputs; got input shapes "
                                  + ", ".join(str(s.input_shape) for s in specs))
    requirement = requirements.for_dataset(config.requirement, dataset)
    if config.budget and not requirement.budget:
        raise EditorTrainingError(f"--budget is for pruning; {requirement.name}'s target is not a share of weights")
    for s, p in zip(specs, pools):
        nets.validate_params(s, p, batch_dims=1)
        requirement.check(s, dataset)
    gmn_config = gmn.GMNConfig.for_specs(specs, hidden=config.hidden, edge_hidden=config.edge_hidden,
                                         layers=config.layers, bilinear=config.bilinear, magnitude=config.magnitude,
                                         messages=config.messages, probe_features=config.probe > 0,
                                         num_groups=dataset.num_groups, masks=requirement.removes,
                                         budget=requirement.target_range if config.budget else None)
    data = baselines.split_batch(dataset, "train")
    probe = stratified_batch(dataset, config.probe, config.seed) if config.probe else None
    measured = stratified_batch(dataset, config.requirement_rows, config.seed) if requirement.whole_split else None
    init, chunk = _chunk_program(specs, requirement, gmn_config, config, jax.tree.map(jnp.asarray, pools), data, probe,
                                 measured)
    record = {"format": EDITOR_FORMAT, "spec": nets.spec_to_dict(specs[0]),
              "specs": [nets.spec_to_dict(s) for s in specs], "config": options.to_dict(config),
              "gmn": dataclasses.asdict(gmn_config), "dataset": dataset.source, **(identity or {})}
    state, start = init(gmn.init_editor(gmn_config, jax.random.key(config.seed), probe).variables), 0
    # the editor kept: the last, or (keep "best", with validation networks) the chunk whose validation
    # loss was lowest; saved with every checkpoint so that a resumed run keeps it
    best = {"params": state.params, "loss": jnp.asarray(jnp.inf, jnp.float32)}
    resume = driver.resume_point(workdir, record)
    if resume is not None:
        start = resume[0]
        restored = checkpoint.restore(workdir, {"train": state, "probe": probe, "best": best}, step=start)[0]
        state, best = restored["train"], restored["best"]
    advance = chunk
    if validations is not None:
        rows = jax.tree.map(lambda a: a[: config.data_batch], data)
        target = requirement.default_target()
        validation_lambda = 1.0 if config.budget else 0.5  # a budgeted editor's lambda 1 is the target itself

        def advance(state):
            state, metrics = chunk(state)
            editor_now = gmn.Editor(gmn_config, state.params, probe)
            terms = [evaluation_loss(editor_now, s, requirement, v, rows, validation_lambda, target)
                     for s, v in zip(specs, validations)]
            mean = {k: sum(t[k] for t in terms) / len(terms) for k in terms[0]}
            if config.keep == "last" or (math.isfinite(mean["loss"]) and mean["loss"] < float(best["loss"])):
                best.update(params=state.params, loss=jnp.asarray(mean["loss"], jnp.float32))
            return state, {**metrics, **{f"val_{k}": v for k, v in mean.items()}}
    else:
        def advance(state):
            state, metrics = chunk(state)
            best.update(params=state.params)
            return state, metrics

    state, finished = driver.run_chunks(advance, state, chunks=config.num_chunks, chunk_steps=config.chunk_steps,
                                        start=start, desc=f"editor {config.requirement}", progress=progress,
                                        workdir=workdir, record=record, stop_after_chunks=stop_after_chunks,
                                        save_tree=lambda s: {"train": s, "probe": probe, "best": dict(best)})
    return gmn.Editor(gmn_config, best["params"], probe) if finished else None


def load_editor(workdir: str | Path) -> tuple[gmn.Editor, dict]:
    """The editor kept by a finished :func:`train_editor` run (``keep``: the last or the best
    validated; its probe batch included), and its record."""
    step, record = checkpoint.read_record(workdir)
    same_edits = record.get("format") == READABLE_OLDER and record.get("gmn", {}).get("edge_dim") == 1
    if record.get("format") != EDITOR_FORMAT and not same_edits:
        found = record.get("format")
        raise checkpoint.CheckpointError(
            f"{workdir} holds an editor of format {found!r}, written by an earlier version; this version reads "
            f"{EDITOR_FORMAT!r}: train it again" if str(found).startswith("metaedit-editor/") else
            f"{workdir} does not hold a metaedit editor")
    if not record.get("complete"):
        raise EditorTrainingError(f"the editor in {workdir} is unfinished ({record.get('chunks_done')} chunks); "
                                  f"run the same train-editor command again to resume")
    older = {"messages": "edges"}  # records written before the weight messages existed hold edge-message editors
    gmn_config = gmn.GMNConfig(**{**older, **record["gmn"]})
    config = options.from_dict(EditorTrainConfig, {**older, **record["config"]})
    spec = nets.spec_from_dict(record["spec"])
    variables = jax.eval_shape(lambda: gmn.init_variables(gmn_config, jax.random.key(0)))
    probe = None
    if config.probe:
        probe = Batch(jax.ShapeDtypeStruct((config.probe,) + tuple(spec.input_shape), jnp.float32),
                      jax.ShapeDtypeStruct((config.probe,), jnp.int32), jax.ShapeDtypeStruct((config.probe,), jnp.int32))
    abstract = {"train": jax.eval_shape(lambda v: training.init_state(v, optimizer(config)), variables), "probe": probe,
                "best": {"params": variables, "loss": jax.ShapeDtypeStruct((), jnp.float32)}}
    tree, record = checkpoint.restore(workdir, abstract, step=step)
    return gmn.Editor(gmn_config, tree["best"]["params"], tree["probe"]), record


def trained_requirement(record: dict, dataset: Dataset) -> Requirement:
    """The requirement an editor's record says it was trained for, bound to ``dataset``."""
    return requirements.for_dataset(record["config"]["requirement"], dataset)

