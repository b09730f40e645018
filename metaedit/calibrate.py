"""Per-network calibration: the least invasive edit that complies, found on validation data.

One trained editor covers every trade-off weight, so :func:`calibrate` edits each network at every
lambda of a grid in one batched, jitted call, measures the requirement exactly on validation rows
(:func:`validation_rows`: training rows stratified over the (group, label) cells), and keeps, per
network, the smallest lambda whose edit complies with a margin (the least invasive compliant edit:
the edit grows with lambda) and does not collapse: an edit that takes away more than half of any
class's predictions on the validation rows never counts as compliant (a constant predictor meets a
gap trivially). Where no lambda complies, it keeps the most compliant edit that does not collapse
and says so (``found`` False). Weight requirements (pruning, minimisation) are measured on the weights alone,
so their validation value is the value.
"""

from __future__ import annotations

import functools
import time
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from metaedit import gmn, nets
from metaedit.datasets import Dataset
from metaedit.editor import check_lambda, condition
from metaedit.probe import cell_shares, stratified_batch
from metaedit.requirements import Requirement
from metaedit.training import Batch

LAMBDAS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)


class Calibrated(NamedTuple):
    """params: the chosen edit of every network [P, ...]; lam [P]: its lambda; found [P] (bool): a
    lambda complied on the validation rows; value [P]: the requirement's value there at the chosen
    lambda; seconds_per_edit: warm wall time per network, the validation measurements included."""

    params: nets.Params
    lam: np.ndarray
    found: np.ndarray
    value: np.ndarray
    seconds_per_edit: float


def validation_rows(dataset: Dataset, size: int = 8192, seed: int = 1) -> Batch:
    """``size`` training rows, stratified over the (group, label) cells, as a device :class:`Batch`
    whose ``weight`` gives each row its cell's share of the training split over its share of the rows
    (so that a measure that mixes labels, as demographic parity does, sees the population's mix)."""
    rows = stratified_batch(dataset, size, seed)
    if dataset.s_train is None:
        return rows
    groups, labels = int(np.max(dataset.s_train)) + 1, int(np.max(dataset.y_train)) + 1
    population = cell_shares(dataset.y_train, dataset.s_train, groups, labels)
    sampled = cell_shares(rows.y, rows.s, groups, labels)
    s, y = np.asarray(rows.s), np.asarray(rows.y)
    weight = population[s, y] / sampled[s, y]
    return rows._replace(weight=jnp.asarray(weight / weight.mean(), jnp.float32))


def _shares(spec: nets.Spec, params: nets.Params, x: jax.Array) -> jax.Array:
    """[C] the share of rows the network predicts as each class."""
    logits = nets.apply(spec, params, x)
    return jax.nn.one_hot(logits.argmax(-1), logits.shape[-1]).mean(0)


@functools.partial(jax.jit, static_argnames=("spec", "requirement"))
def _edits_and_values(editor: gmn.Editor, spec: nets.Spec, requirement: Requirement, params: nets.Params,
                      conditions: jax.Array, rows: Batch) -> tuple[nets.Params, jax.Array, jax.Array]:
    """Every network edited at every condition [K, 2]: edits [K, P, ...], values [K, P] and whether
    the edit collapsed [K, P] (a class lost more than half of its predicted share on the rows)."""
    before = jax.vmap(lambda p: _shares(spec, p, rows.x))(params)

    def at(cond):
        edited = jax.vmap(lambda p: gmn.edit_one(editor, spec, p, cond))(params)
        after = jax.vmap(lambda p: _shares(spec, p, rows.x))(edited)
        return (edited, jax.vmap(lambda p: requirement.exact(spec, p, rows))(edited),
                (after < before / 2).any(-1))

    return jax.lax.map(at, conditions)


def calibrate(editor: gmn.Editor, spec: nets.Spec, requirement: Requirement, params: nets.Params, target: float,
              rows: Batch, lambdas: Sequence[float] = LAMBDAS, margin: float | None = None,
              reject_collapse: bool = True) -> Calibrated:
    """The least invasive compliant edit of every network of ``params`` [P, ...] (module docstring).

    ``margin`` (default: half the requirement's safety margin: 0.01 for the gaps, 0 for the weight
    requirements) makes compliance on the validation rows stricter than the target;
    ``reject_collapse`` False lets a collapsed edit count as compliant.
    """
    for lam in lambdas:
        check_lambda(lam)
    target = requirement.check_target(target)
    margin = requirement.safety_margin / 2 if margin is None else margin
    strict = target + margin if requirement.higher_is_compliant else target - margin
    lambdas = np.sort(np.asarray(lambdas, np.float32))
    conditions = condition(requirement, jnp.asarray(lambdas), jnp.full(len(lambdas), target, jnp.float32))
    params = jax.tree.map(jnp.asarray, params)
    jax.block_until_ready(_edits_and_values(editor, spec, requirement, params, conditions, rows))  # compile
    started = time.perf_counter()
    edited, values, collapsed = jax.block_until_ready(
        _edits_and_values(editor, spec, requirement, params, conditions, rows))
    values = np.asarray(values)  # [K, P]
    collapsed = np.asarray(collapsed) & reject_collapse
    complies = (values >= strict if requirement.higher_is_compliant else values <= strict) & ~collapsed
    found = complies.any(0)
    # where none complies: the most compliant edit that does not collapse (the smallest lambda if all do)
    score = np.where(collapsed, -np.inf, values if requirement.higher_is_compliant else -values)
    most = np.where(np.isfinite(score).any(0), score.argmax(0), 0)
    chosen = np.where(found, complies.argmax(0), most)  # the first (smallest) compliant lambda
    count = nets.population_size(params)
    picked = jax.tree.map(lambda leaf: leaf[chosen, np.arange(count)], edited)
    seconds = (time.perf_counter() - started) / count
    return Calibrated(picked, lambdas[chosen], found, values[chosen, np.arange(count)], seconds)
