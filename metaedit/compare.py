"""The editor against the baselines on the same held-out networks: one row per method and setting.

Every row has ``method``, ``setting``, ``target``, ``value`` (the requirement's mean measure on the
test split), ``compliance_rate`` (the fraction of networks that meet the target),
``accuracy_change`` (mean test accuracy after minus before, in accuracy units),
``constant_fraction`` (the fraction of networks that predict one class for every test row: such an
edit may meet a gap requirement trivially, so it is always reported) and ``seconds_per_edit``
(warm wall time per network, compilation excluded on both sides). Editor rows add ``lambda`` and
``jsd`` (mean divergence from the original network on the test split). For the fairness gaps, the
calibrated group-shift edit (:mod:`metaedit.groupshift`, method ``group_shift``) is a row of its own, and
for data minimisation the imputation edit (:mod:`metaedit.imputation`, method ``imputation``). For a
requirement met by removing weights (pruning, minimisation), each editor row is followed by the same
edit refit layer-wise to the original network on its own zeros (:mod:`metaedit.refit`, method
``editor+refit``; its time includes the edit's).
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from metaedit import calibrate, gmn, groupshift, imputation, nets, refit, requirements
from metaedit.baselines import Baseline, BaselineResult, predict, warm_seconds
from metaedit.datasets import Dataset
from metaedit.editor import check_lambda, condition
from metaedit.requirements import Minimisation, Requirement


@functools.partial(jax.jit, static_argnums=0)
def _logits(spec: nets.Spec, params: nets.Params, x: jax.Array) -> jax.Array:
    return jax.vmap(lambda p: nets.apply(spec, p, x))(params)


def summarise(requirement: Requirement, spec: nets.Spec, result: BaselineResult, dataset: Dataset, target: float,
              accuracy_before: np.ndarray) -> dict:
    """The row fields every method shares, for one method's edited networks (see the module docstring)."""
    values = requirement.measure_result(spec, result, dataset)
    predictions = np.asarray(result.predictions)
    accuracy = (predictions == np.asarray(dataset.y_test)[None]).mean(1)
    constant = (predictions == predictions[:, :1]).all(1)
    return {"target": float(target), "value": float(values.mean()),
            "compliance_rate": float(np.mean([requirement.complies(v, target) for v in values])),
            "accuracy_change": float((accuracy - accuracy_before).mean()),
            "constant_fraction": float(constant.mean()), "seconds_per_edit": float(result.seconds_per_edit)}


def test_accuracy(spec: nets.Spec, params: nets.Params, dataset: Dataset) -> np.ndarray:
    """[P] test accuracy of stacked networks."""
    return (predict(spec, params, dataset.x_test) == np.asarray(dataset.y_test)[None]).mean(1)


def evaluate_editor(editor: gmn.Editor, spec: nets.Spec, requirement: Requirement, params: nets.Params,
                    dataset: Dataset, lambdas: Sequence[float], target: float, progress: bool = False,
                    calibrated: bool = True, group_shift: bool = True, imputed: bool = True,
                    refitted: bool = True) -> list[dict]:
    """Hard edits of stacked held-out ``params`` at each lambda, measured on the test split (one row
    per lambda, method ``editor``; a progress bar over the lambdas with ``progress``), and with
    ``calibrated`` one more row, ``lambda`` "auto": each network's least invasive edit that complies
    on validation rows of the training split (:mod:`metaedit.calibrate`), with ``lambda_mean`` (the
    mean lambda chosen), ``found_rate`` (networks where some lambda complied on the validation
    rows) and ``agreement`` (networks whose test-split compliance agrees with the validation rows).
    With ``group_shift``, where :func:`group_shift_reason` allows it, the row of
    :func:`evaluate_group_shift` follows; with ``imputed``, for data minimisation on an MLP, the row
    of :func:`evaluate_imputation`; with ``refitted``, where :func:`refit_reason` allows it, every
    editor row is followed by an ``editor+refit`` row."""
    for lam in lambdas:
        check_lambda(lam)
    target = requirement.check_target(target)
    if not nets.population_size(params):
        raise requirements.RequirementError("there are no networks to edit (the zoo's test split of networks is "
                                            "empty: it needs at least 3 members)")
    held = _held_out(spec, requirement, params, dataset, target)
    rows = []
    for lam in tqdm(lambdas, desc="editing", unit="lambda", disable=not progress):
        cond = condition(requirement, jnp.asarray(lam, jnp.float32), jnp.asarray(target, jnp.float32))
        edited, seconds = warm_seconds(lambda: gmn.edit(editor, spec, params, cond), nets.population_size(params))
        setting = f"lambda={float(lam)}"
        rows.append(_edit_row(held, "editor", setting, float(lam), edited, seconds)[0])
        if refitted and refit_reason(requirement) is None:
            rebuilt, refit_seconds = refit.refit_edits(spec, params, edited, dataset, refit_masked_layers(requirement))
            rows.append(_edit_row(held, "editor+refit", setting, float(lam), rebuilt, seconds + refit_seconds)[0])
    validation = calibrate.validation_rows(dataset)
    if calibrated:
        chosen = calibrate.calibrate(editor, spec, requirement, params, target, validation)
        rows.append(_calibrated_row(held, "editor", "lambda=auto", chosen.params, chosen.found, chosen.seconds_per_edit,
                                    lambda_mean=float(chosen.lam.mean())))
    if group_shift and group_shift_reason(spec, requirement, dataset) is None:
        rows.append(_group_shift_row(held, params, validation))
    if imputed and imputation_reason(spec, requirement) is None:
        rows.append(_imputation_row(held, params))
    return rows


class _HeldOut(NamedTuple):
    """What the rows of one set of held-out networks are measured against: their test logits
    ``before`` [P, n, C] and test accuracies [P], with the requirement, target and data."""

    spec: nets.Spec
    requirement: Requirement
    dataset: Dataset
    target: float
    before: jax.Array
    accuracy_before: np.ndarray


def _held_out(spec, requirement, params, dataset, target) -> _HeldOut:
    return _HeldOut(spec, requirement, dataset, target, _logits(spec, params, jnp.asarray(dataset.x_test)),
                    test_accuracy(spec, params, dataset))


def _edit_row(held: _HeldOut, method: str, setting: str, lam, edited: nets.Params, seconds: float,
              **extra) -> tuple[dict, BaselineResult]:
    """One row of edited networks [P, ...] (``seconds`` warm per network): the shared fields, ``lambda``,
    ``jsd`` and ``extra``; and their result on the test split."""
    after = _logits(held.spec, edited, jnp.asarray(held.dataset.x_test))
    result = BaselineResult(edited, np.asarray(after.argmax(-1)), seconds)
    return ({"method": method, "setting": setting, "lambda": lam,
             **summarise(held.requirement, held.spec, result, held.dataset, held.target, held.accuracy_before),
             "jsd": float(jax.vmap(requirements.jsd)(held.before, after).mean()), **extra}, result)


def _calibrated_row(held: _HeldOut, method: str, setting: str, edited: nets.Params, found: np.ndarray | None,
                    seconds: float, **extra) -> dict:
    """The row of a calibrated mode (``lambda`` "auto"): :func:`_edit_row`'s, ``found_rate`` and
    ``agreement`` (see :func:`evaluate_editor`); ``found`` None: a weight requirement, whose verdict
    is its measurement."""
    row, result = _edit_row(held, method, setting, "auto", edited, seconds, **extra)
    values = held.requirement.measure_result(held.spec, result, held.dataset)
    on_test = np.asarray([held.requirement.complies(v, held.target) for v in values])
    found = on_test if found is None else found
    return {**row, "found_rate": float(np.mean(found)), "agreement": float(np.mean(on_test == found))}


def group_shift_reason(spec: nets.Spec, requirement: Requirement, dataset: Dataset) -> str | None:
    """None where a group-shift edit (:mod:`metaedit.groupshift`) can be made, else why not."""
    try:
        groupshift.check(spec, requirement)
        groupshift.group_columns(dataset)
    except groupshift.GroupShiftError as error:
        return str(error)
    return None


def _group_shift_row(held: _HeldOut, params: nets.Params, validation) -> dict:
    shifted = groupshift.edit(held.spec, held.requirement, params, held.dataset, held.target, validation)
    return _calibrated_row(held, "group_shift", "auto", shifted.params, shifted.found, shifted.seconds_per_edit)


def evaluate_group_shift(spec: nets.Spec, requirement: Requirement, params: nets.Params, dataset: Dataset,
                         target: float) -> dict:
    """The calibrated group-shift edit of stacked held-out ``params``, measured on the test split: one
    row, method ``group_shift``, ``lambda`` "auto", with ``jsd``, ``found_rate`` (networks whose
    validation rows met the target with the margin) and ``agreement`` (networks whose test-split
    compliance agrees with the validation rows)."""
    return _group_shift_row(_held_out(spec, requirement, params, dataset, target), params,
                            calibrate.validation_rows(dataset))


def refit_reason(requirement: Requirement) -> str | None:
    """None where an edit for ``requirement`` can be refit layer-wise (:mod:`metaedit.refit`; any MLP or
    CNN), else why not."""
    if not requirement.removes:
        return f"{requirement.name} is not met by removing weights: a refit to the original would undo the edit"
    return None


def refit_masked_layers(requirement: Requirement) -> int | None:
    """How many leading layers a refit must keep the zeros of, for ``requirement`` (None: all):
    data minimisation counts only the first layer's input rows."""
    return 1 if isinstance(requirement, Minimisation) else None


def imputation_reason(spec: nets.Spec, requirement: Requirement) -> str | None:
    """None where an imputation edit (:mod:`metaedit.imputation`) can be made, else why not."""
    try:
        imputation.check(spec, requirement)
    except imputation.ImputationError as error:
        return str(error)
    return None


def _imputation_row(held: _HeldOut, params: nets.Params) -> dict:
    edited = imputation.edit(held.spec, held.requirement, params, held.dataset, held.target)
    return _calibrated_row(held, "imputation", f"kept<={int(np.floor(held.target))}", edited.params, None,
                           edited.seconds_per_edit)


def evaluate_imputation(spec: nets.Spec, requirement: Requirement, params: nets.Params, dataset: Dataset,
                        target: float) -> dict:
    """The imputation edit of stacked held-out ``params`` (data minimisation), measured on the test
    split: one row, method ``imputation``, ``lambda`` "auto", with ``jsd``, ``found_rate`` (networks
    whose edited weights read at most ``target`` groups) and ``agreement`` (as
    :func:`evaluate_group_shift`; a weight requirement, so the verdicts are the same measurement)."""
    return _imputation_row(_held_out(spec, requirement, params, dataset, target), params)


def evaluate_baselines(requirement: Requirement, spec: nets.Spec, params: nets.Params, dataset: Dataset,
                       target: float, strengths: dict[str, Sequence[float]] | None = None,
                       only: Sequence[str] | None = None) -> list[dict]:
    """Every baseline of ``requirement`` (or those named in ``only``) on the same networks, at each of
    ``strengths[name]`` (default: the baseline's default strength, or the target)."""
    accuracy_before = test_accuracy(spec, params, dataset)
    table: dict[str, Baseline] = requirement.baselines()
    unknown = sorted(set(only or ()) - set(table))
    if unknown:
        raise requirements.RequirementError(f"{requirement.name} has no baselines {unknown}; it has {', '.join(table)}")
    rows = []
    for name in only if only is not None else table:
        baseline = table[name]
        default = target if baseline.default_strength is None else baseline.default_strength
        for strength in (strengths or {}).get(name, [default]):
            result = baseline.run(spec, params, dataset, strength, target=target)
            setting = f"{baseline.strength}={strength}" if baseline.strength else "-"
            rows.append({"method": name, "setting": setting,
                         **summarise(requirement, spec, result, dataset, target, accuracy_before)})
    return rows
