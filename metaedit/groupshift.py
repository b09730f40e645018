"""Group-shift edits: a per-group shift of an MLP's decision, written into its weights, calibrated per network.

The fairness gaps compare groups of a sensitive attribute that the network itself reads (Adult's
``sex=Female``/``sex=Male`` columns, a user's CSV keeps its sensitive column as a feature too). So a
weight edit can add an exact per-group constant ``delta_g`` to the logit of class 1 (a group-specific
decision threshold), with no attribute needed at prediction time beyond the network's own input:

* **The route.** In each hidden layer the least-used neuron (mean |activation| x the norm of its
  outgoing weights, on the calibration rows) is given up. The first one reads only the one-hot
  columns that determine the group, with weight ``delta_g - min(delta)`` on group g's columns and no
  bias, so it outputs exactly ``delta_g - min(delta) >= 0`` (ReLU is the identity there). Each next
  one copies it (weight 1 from the previous route neuron, nothing else in, no bias); the last one
  feeds only class 1's logit, with weight 1, and class 1's bias gains ``min(delta)``. The route
  neurons feed nothing else. A network without hidden layers gets the shift on its input weights.
* **The shifts.** On validation rows (training rows stratified over the (group, label) cells), each
  group's decision is swept over candidate shifts (a grid fine near the decision and coarse in the
  tails, scaled to the rows' logit margins; counted with a histogram, no sort), and the shifts kept are those that maximise the accuracy the population would
  see (each (group, label) cell weighted by its share of the training split) subject to the gap being
  at most ``target - margin``: every group within the bound of the largest group (within half the
  bound with more than two groups, so that every pair is within the bound). No group may lose more
  than half of its predicted share of either class (no edit passes by predicting one class). Where no
  shift complies, the shifts that come closest are kept and ``found`` says so.

This is a post-processing of the network's decision, like fairlearn's ``ThresholdOptimizer``, but
deterministic and compiled into the weights: the result is a network of the same architecture.
It is not the metanetwork (:mod:`metaedit.gmn`): it reads data, not weights alone, and it serves the
gap requirements only. Hand-written (no library realises thresholds in weights), in JAX so that it
runs batched over a population under one ``jit``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from metaedit import nets
from metaedit.baselines import warm_seconds
from metaedit.datasets import Dataset
from metaedit.probe import cell_shares
from metaedit.requirements import EqualisedOdds, Gap, Requirement
from metaedit.training import Batch

CANDIDATES = 127  # shifts tried per group (odd: 0 is the middle one), from no row to every row predicted 1


class GroupShiftError(ValueError):
    """A group-shift edit cannot be made here (no gap requirement, no such input, not an MLP)."""


class GroupShifted(NamedTuple):
    """params: the edited networks [P, ...]; shifts [P, G]: each group's shift of the class-1 logit;
    found [P] (bool): the gap met the bound on the validation rows; value [P]: the gap there (the
    (group, label) cells' rates from the rows; for demographic parity, weighted by the population's label
    shares per group, as the rows are stratified);
    seconds_per_edit: warm wall time per network, the validation measurements included."""

    params: nets.Params
    shifts: np.ndarray
    found: np.ndarray
    value: np.ndarray
    seconds_per_edit: float


def group_columns(dataset: Dataset) -> np.ndarray:
    """[d] int: the sensitive group each input column indicates, -1 for the others.

    The columns are those of the one-hot feature group that determines the sensitive attribute on
    every training and test row (each of its columns seen with one group only). Raises
    :class:`GroupShiftError` where the attribute is not such an input of the network."""
    if dataset.s_train is None:
        raise GroupShiftError(f"{dataset.name} has no sensitive attribute: a group-shift edit needs one")
    if len(dataset.input_shape) != 1 or not dataset.feature_groups:
        raise GroupShiftError(f"{dataset.name} is not tabular: a group-shift edit needs the sensitive attribute "
                              "as one-hot input columns")
    x = np.concatenate([dataset.x_train, dataset.x_test])
    s = np.concatenate([dataset.s_train, dataset.s_test])
    for columns in dataset.feature_groups:
        block = x[:, list(columns)]
        if len(columns) < 2 or not np.isin(block, (0.0, 1.0)).all() or not (block.sum(1) == 1).all():
            continue
        hot = block.argmax(1)
        groups = [np.unique(s[hot == j]) for j in range(len(columns))]
        if all(len(g) <= 1 for g in groups) and len({int(g[0]) for g in groups if len(g)}) >= 2:
            mapping = np.full(dataset.input_shape[0], -1, np.int32)
            mapping[list(columns)] = [int(g[0]) if len(g) else -1 for g in groups]
            return mapping
    raise GroupShiftError(f"the sensitive attribute {dataset.sensitive_name!r} of {dataset.name} is not an input of "
                          "the network (no one-hot feature group determines it): a group-shift edit needs it")


def check(spec: nets.Spec, requirement: Requirement) -> None:
    """Raises :class:`GroupShiftError` unless ``spec`` and ``requirement`` admit a group-shift edit."""
    if not isinstance(requirement, Gap):
        raise GroupShiftError(f"a group-shift edit meets a fairness gap; {requirement.name} is not one")
    if not isinstance(spec, nets.MLPSpec) or spec.num_classes != 2:
        raise GroupShiftError(f"a group-shift edit needs a binary MLP; got {nets.describe(spec)} with "
                              f"{spec.num_classes} classes")


def route_neurons(spec: nets.MLPSpec, params: nets.Params, hidden: list[jax.Array]) -> list[jax.Array]:
    """Per hidden layer, the index of its least-used neuron, from the hidden activations ``hidden``
    (:func:`metaedit.nets.mlp_forward`, one network)."""
    names = [layer.name for layer in nets.layers(spec)]
    return [jnp.argmin(jnp.abs(h).mean(0) * jnp.linalg.norm(params[names[i + 1]]["kernel"], axis=1))
            for i, h in enumerate(hidden)]


def with_route(spec: nets.MLPSpec, params: nets.Params, neurons: list[jax.Array], column_weights: jax.Array,
               offset: jax.Array) -> nets.Params:
    """``params`` (one network) with the route through ``neurons`` (module docstring): the class-1 logit
    gains ``column_weights @ x + offset``. ``column_weights`` [d] must be >= 0 where it is not 0."""
    names = [layer.name for layer in nets.layers(spec)]
    out = {name: dict(params[name]) for name in names}
    last = names[-1]
    out[last]["bias"] = out[last]["bias"].at[1].add(offset)
    if not neurons:
        out[last]["kernel"] = out[last]["kernel"].at[:, 1].add(column_weights)
        return out
    first = names[0]
    out[first]["kernel"] = out[first]["kernel"].at[:, neurons[0]].set(column_weights)
    out[first]["bias"] = out[first]["bias"].at[neurons[0]].set(0.0)
    for i, (before, neuron) in enumerate(zip(neurons[:-1], neurons[1:])):
        name = names[i + 1]
        kernel = out[name]["kernel"].at[before, :].set(0.0).at[:, neuron].set(0.0)
        out[name]["kernel"] = kernel.at[before, neuron].set(1.0)
        out[name]["bias"] = out[name]["bias"].at[neuron].set(0.0)
    out[last]["kernel"] = out[last]["kernel"].at[neurons[-1], :].set(0.0).at[neurons[-1], 1].set(1.0)
    return out


def _choose(margin: jax.Array, original: jax.Array, rows: Batch, cell_weights: jax.Array, bound: float,
            equalised: bool, candidates: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The shifts [G] for one network's validation margins [n] (module docstring), whether they meet
    the bound, and the gap they leave on the rows (each group's label shares from the population).
    ``original`` [G]: each group's share of rows the unedited network predicts as class 1;
    ``cell_weights`` [G, 2]: each (group, label) cell's share of the population."""
    groups = cell_weights.shape[0]
    # candidate thresholds t_k = scale * sinh(u_k) on a symmetric grid of u (t = 0 in the middle: no shift):
    # fine near the decision, coarse in the tails, reaching every margin; shift_k = -t_k
    scale = jnp.abs(margin).mean() / 8 + 1e-6
    reach = jnp.arcsinh(jnp.abs(margin).max() / scale) + 1e-3
    half = candidates // 2
    step = reach / half
    threshold = scale * jnp.sinh(step * jnp.arange(-half, half + 1))  # [K], increasing
    # a histogram per (group, label) cell of how many thresholds lie below each row's margin (no sort)
    below = jnp.clip(jnp.ceil(jnp.arcsinh(margin / scale) / step + half), 0, 2 * half + 1).astype(jnp.int32)
    cells = rows.s * 2 + rows.y
    histogram = jnp.zeros((2 * half + 2, groups * 2)).at[below, cells].add(1.0)  # [K + 1, G*2]
    counts = histogram.sum(0).reshape(groups, 2)
    above = jnp.cumsum(histogram[::-1], 0)[::-1][1:]  # [K, G*2]: rows with margin > t_k
    rate = above.reshape(-1, groups, 2) / jnp.maximum(counts, 1)  # [K, G, 2]: P(yhat=1 | g, y)
    rate = jnp.moveaxis(rate, 0, 1)  # [G, K, 2]
    present = counts.min(1) > 0 if equalised else counts.sum(1) > 0
    if equalised:
        statistic = rate  # both labels' rates must agree
    else:
        # the rows are stratified over the cells: each group's label shares come from the population
        share = cell_weights / jnp.maximum(cell_weights.sum(1, keepdims=True), 1e-12)
        statistic = (rate * share[:, None, :]).sum(-1, keepdims=True)  # [G, K, 1]: P(yhat=1 | g)
    accuracy = rate[..., 1] * cell_weights[:, None, 1] + (1 - rate[..., 0]) * cell_weights[:, None, 0]  # [G, K]
    positive = (rate * counts[:, None, :]).sum(-1) / jnp.maximum(counts.sum(1), 1)[:, None]  # [G, K]
    kept = (positive >= original[:, None] / 2) & (1 - positive >= (1 - original[:, None]) / 2)  # no collapse
    reference = jnp.argmax(jnp.where(present, cell_weights.sum(1), -1.0))
    tolerance = bound if groups == 2 else bound / 2
    # deviation [G, K_ref, K]: group g at shift k against the reference at shift k_ref
    deviation = jnp.abs(statistic[:, None, :, :] - statistic[reference][None, :, None, :]).max(-1)
    deviation = jnp.where(present[:, None, None], deviation, 0.0)
    usable = kept[:, None, :] & kept[reference][None, :, None]  # [G, K_ref, K]: neither collapses a class
    allowed = (deviation <= tolerance) & usable
    mine = jnp.arange(groups)[:, None, None] == reference
    same = jnp.arange(2 * half + 1)[None, :, None] == jnp.arange(2 * half + 1)[None, None, :]
    allowed = jnp.where(mine, same & kept[reference][None, :, None], allowed)
    allowed = jnp.where(present[:, None, None] | mine, allowed, jnp.arange(2 * half + 1) == half)
    gain = jnp.where(allowed, accuracy[:, None, :], -jnp.inf)  # [G, K_ref, K]
    best, total = gain.argmax(-1), gain.max(-1).sum(0)  # [G, K_ref], [K_ref]
    found = jnp.isfinite(total).any()
    # where nothing is allowed: the usable shifts that come closest to the bound (ties: the reference unshifted)
    closest = jnp.where(mine, jnp.where(same & usable, 0.0, jnp.inf), jnp.where(usable, deviation, jnp.inf)).argmin(-1)
    worst = jnp.take_along_axis(jnp.where(mine | ~usable, 0.0, deviation), closest[..., None], -1)[..., 0].max(0)
    worst = jnp.where(kept[reference], worst, jnp.inf).at[half].add(-1e-6)  # ties: the reference unshifted
    pick = jnp.where(found, total.argmax(), worst.argmin())
    index = jnp.where(found, best[:, pick], closest[:, pick])
    chosen = statistic[jnp.arange(groups), index]  # [G, 1 or 2]
    gap = (jnp.where(present[:, None], chosen, -jnp.inf).max(0) - jnp.where(present[:, None], chosen, jnp.inf).min(0))
    return -threshold[index], found, jnp.where(present.sum() >= 2, gap.max(), 0.0)


@functools.partial(jax.jit, static_argnames=("spec", "requirement", "candidates"))
def _edit_all(spec: nets.MLPSpec, requirement: Gap, params: nets.Params, rows: Batch, columns: jax.Array,
              cell_weights: jax.Array, bound: jax.Array, candidates: int) -> tuple[nets.Params, jax.Array,
                                                                                     jax.Array, jax.Array]:
    """Every network of ``params`` [P, ...] edited: (params, shifts [P, G], found [P], gap [P])."""
    equalised = isinstance(requirement, EqualisedOdds)

    def one(p):
        hidden, before = nets.mlp_forward(spec, p, rows.x)
        neurons = route_neurons(spec, p, hidden)
        zero = jnp.zeros(columns.shape, jnp.float32)
        bare = with_route(spec, p, neurons, zero, jnp.zeros(()))  # the route's neurons given up, no shift yet
        # the bare network differs from p in the first layer in one neuron only: its pass there is reused
        logits = nets.mlp_forward(spec, bare, hidden[0].at[:, neurons[0]].set(0.0), 1)[1] if neurons else before
        members = jax.nn.one_hot(rows.s, cell_weights.shape[0], dtype=jnp.float32)  # [n, G]
        original = ((before[:, 1] > before[:, 0]) @ members) / jnp.maximum(members.sum(0), 1)
        shifts, found, gap = _choose(logits[:, 1] - logits[:, 0], original, rows, cell_weights, bound, equalised,
                                     candidates)
        low = shifts.min()
        weights = jnp.where(columns >= 0, shifts[jnp.maximum(columns, 0)] - low, 0.0)
        return with_route(spec, p, neurons, weights, low), shifts, found, gap

    return jax.lax.map(one, params, batch_size=16)


def cell_weights(dataset: Dataset, groups: int) -> np.ndarray:
    """[G, 2] each (group, label) cell's share of the training split."""
    return cell_shares(dataset.y_train, dataset.s_train, groups, 2).astype(np.float32)


def edit(spec: nets.Spec, requirement: Requirement, params: nets.Params, dataset: Dataset, target: float,
         rows: Batch, margin: float | None = None, candidates: int = CANDIDATES) -> GroupShifted:
    """Every network of ``params`` [P, ...] given the group shifts that meet ``target`` on ``rows`` (the
    validation rows, :func:`metaedit.calibrate.validation_rows`) with ``margin`` to spare (default:
    half the requirement's safety margin, as the editor's calibration) at the best population accuracy
    there. Timed warm (one call compiles first)."""
    check(spec, requirement)
    target = requirement.check_target(target)
    margin = requirement.safety_margin / 2 if margin is None else margin
    if candidates < 8:
        raise GroupShiftError(f"candidates must be >= 8, got {candidates}")
    columns = jnp.asarray(group_columns(dataset))
    weights = jnp.asarray(cell_weights(dataset, requirement.num_groups))
    bound = jnp.asarray(max(target - margin, 0.0), jnp.float32)
    params = jax.tree.map(jnp.asarray, params)
    run = functools.partial(_edit_all, spec, requirement, params, rows, columns, weights, bound, candidates)
    (edited, shifts, found, value), seconds = warm_seconds(run, nets.population_size(params))
    return GroupShifted(edited, np.asarray(shifts), np.asarray(found), np.asarray(value), seconds)
