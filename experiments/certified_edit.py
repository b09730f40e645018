"""Experiment family: certified edits against the plain edit and fine-tuning inside the LID.

For each requirement (pruning, minimisation, fairness on Adult) the compliance experiment's zoo and
editor are trained, or loaded when finished (:func:`experiments.compliance.trained`, the same folders), and every
one of the held-out networks (or the first ``networks``) gets a utility specification: certified accuracy
with a 95% held-out lower bound >= ``tau = train accuracy - delta`` (the training split only, so tau
does not look at the rows that test it). Three methods on each network:

* **plain edit**: the editor at the calibrated lambda; its ``point_lower_bound`` is the held-out
  bound of that single network, with no region around it;
* **certified edit** (:func:`metaedit.certified.certified_edit`): the same edit, certified; the
  bound holds for every network of its LID, and every network there keeps the edit's zeros;
* **fine-tuning inside the LID**: the original network's own LID for the same tau, then AdamW on
  cross-entropy plus ``weight * excess`` of the requirement, every step projected onto the LID (the
  safe-update recipe, aimed at the requirement).

``ablation_networks`` networks are also certified without bias weights along the edit (how much of
the edit's move the projection keeps). Tables: ``metrics.csv`` (one row per network and method),
``summary.csv``; figure: ``certified.png`` (lower bound minus tau against accuracy change).
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import optax

from certify import lid
from certify.domains import Box
from certify.solver import LIDConfig
from experiments import compliance
from experiments.configs import fairness, minimisation, pruning
from metaedit import certified, nets, report, training
from metaedit.baselines import split_batch
from metaedit.options import option
from metaedit.requirements.base import accuracy

TABLES = ("metrics.csv", "summary.csv")
REQUIREMENTS = {"pruning": pruning.get_config, "minimisation": minimisation.get_config,
                "fairness": fairness.get_config}
METHODS = ("plain edit", "certified edit", "fine-tuning inside the LID", "certified edit (no bias)")


@dataclasses.dataclass(frozen=True)
class Config:
    """A certified-edit experiment."""

    requirements: tuple[str, ...] = option(tuple(REQUIREMENTS), "requirements (each with its compliance "
                                                                "experiment's zoo and editor)")
    networks: int | None = option(None, "held-out networks per requirement (default: all of them)")
    ablation_networks: int = option(8, "of these, how many are also certified without bias weights")
    delta: float = option(0.04, "tau = the network's train accuracy less this")
    confidence: float = option(0.95, "confidence of the held-out lower bound")
    bound: str = option("interval", "bound propagation of the LIDs", choices=("interval", "linear"))
    finetune_steps: int = option(200, "steps of fine-tuning inside the LID")
    finetune_weight: float = option(5.0, "weight of the requirement's excess in that fine-tuning")
    out: str = option("results/certified_edit", "output folder")


@functools.partial(jax.jit, static_argnames=("spec", "requirement", "steps"))
def _finetune_inside(spec, requirement, params, box: Box, data, key, target, weight, steps: int):
    """AdamW (lr 1e-3, batches of 128) on cross-entropy + weight * excess, projected onto ``box`` each step."""
    tx = optax.adamw(1e-3)

    def loss(q, rows):
        batch = jax.tree.map(lambda a: a[rows], data)
        return training.cross_entropy(spec, q, batch.x, batch.y) + weight * requirement.excess(spec, q, batch, target)

    step = training.make_step(tx, loss, project=box.project)
    body = lambda state, k: (step(state, jax.random.randint(k, (128,), 0, data.y.shape[0]))[0], None)  # noqa: E731
    state, _ = jax.lax.scan(body, training.init_state(params, tx), jax.random.split(key, steps))
    return state.params


CERTIFIED_COLUMNS = ("lambda", "requirement_value", "compliant", "accuracy_change", "certified",
                     "certified_accuracy_lower_bound", "resolution", "conflict", "edit_complies", "projected_complies",
                     "kept_move", "masked_parameters", "seconds")
"""The columns of a certified edit's row (:meth:`metaedit.certified.CertifiedEdit.row`) the tables keep."""


def _certified_row(result: certified.CertifiedEdit, method: str) -> dict:
    row = result.row()
    return {"method": method, **{k: row[k] for k in CERTIFIED_COLUMNS}, "message": result.message}


def one_requirement(config: Config, name: str) -> list[dict]:
    setup = compliance.trained(REQUIREMENTS[name](), reuse_finished=True)
    dataset, spec, requirement, target = setup.dataset, setup.spec, setup.requirement, setup.target
    test, train = split_batch(dataset, "test"), split_batch(dataset, "train")
    held_out = setup.zoo.subset("test")
    count = nets.population_size(held_out) if config.networks is None else min(config.networks,
                                                                                  nets.population_size(held_out))
    lid_config = LIDConfig(bound=config.bound)
    cert_rows, heldout_rows = lid.certification_rows(len(dataset.y_test),
                                                     *lid.default_sample_counts(len(dataset.y_test)), 0)
    rows = []
    for i in range(count):
        original = jax.tree.map(lambda a: jnp.asarray(a[i]), held_out)
        tau = round(float(accuracy(spec, original, train.x, train.y)) - config.delta, 3)
        common = {"requirement": name, "network": i, "target": target, "tau": tau}
        result = certified.certified_edit(setup.editor, spec, requirement, original, dataset, "auto", tau, target,
                                          lid_config, config.confidence, rows=(cert_rows, heldout_rows))
        rows.append({**common, "method": "plain edit", "lambda": result.lam,
                     **certified.outcome(spec, requirement, target, result.edit, original, test),
                     "certified_accuracy_lower_bound": None, "point_lower_bound": result.edit_lower_bound,
                     "seconds": None})
        row = _certified_row(result, "certified edit")
        rows.append({**common, **row})
        rows.append({**common, **_inside_lid(config, spec, requirement, target, original, dataset, tau, lid_config,
                                             (cert_rows, heldout_rows), train, test)})
        if i < config.ablation_networks:
            plain = certified.certified_edit(setup.editor, spec, requirement, original, dataset, result.lam, tau,
                                             target, lid_config, config.confidence, bias=False,
                                             rows=(cert_rows, heldout_rows), edited=result.edit)
            rows.append({**common, **_certified_row(plain, "certified edit (no bias)")})
        print(f"{name} network {i}: tau {tau}, certified edit {row['resolution']}, compliant {row['compliant']}, "
              f"bound {row['certified_accuracy_lower_bound']:.4f}", flush=True)
    return rows


def _inside_lid(config, spec, requirement, target, original, dataset, tau, lid_config, rows, train, test) -> dict:
    """The original network's LID for tau, then fine-tuning for the requirement projected onto it."""
    started = time.perf_counter()
    try:
        found = lid.for_network(spec, original, dataset, tau, lid_config, confidence=config.confidence, rows=rows)
    except lid.LIDError as error:
        return {"method": "fine-tuning inside the LID", "certified": False, "message": str(error)}
    box = found.best.domain
    tuned = _finetune_inside(spec, requirement, original, box, train, jax.random.key(0), target,
                             config.finetune_weight, config.finetune_steps)
    bound = found.best.certificates[0].lower_bound
    return {"method": "fine-tuning inside the LID",
            **certified.outcome(spec, requirement, target, tuned, original, test),
            "certified": bool(box.contains(tuned) and bound >= tau), "certified_accuracy_lower_bound": bound,
            "seconds": time.perf_counter() - started}


def run(config: Config) -> dict[str, list[dict]]:
    unknown = set(config.requirements) - set(REQUIREMENTS)
    if unknown:
        raise ValueError(f"unknown requirements {sorted(unknown)}; choose from {sorted(REQUIREMENTS)}")
    return {"metrics.csv": [row for name in config.requirements for row in one_requirement(config, name)]}


def _mean(values) -> float | None:
    values = [float(v) for v in values if v is not None and v == v]
    return statistics.fmean(values) if values else None


def summarise(rows: list[dict]) -> list[dict]:
    """One row per requirement and method: rates and means over its networks."""
    summary = []
    for name in dict.fromkeys(r["requirement"] for r in rows):
        for method in METHODS:
            mine = [r for r in rows if r["requirement"] == name and r["method"] == method]
            if not mine:
                continue
            plain = method == "plain edit"
            bounds = [r.get("point_lower_bound" if plain else "certified_accuracy_lower_bound") for r in mine]
            meets = [(plain or bool(r.get("certified"))) and b is not None and b >= r["tau"]
                     for r, b in zip(mine, bounds)]
            summary.append({
                "requirement": name, "method": method, "networks": len(mine),
                "compliance_rate": _mean(r.get("compliant") for r in mine),
                "accuracy_change": _mean(r.get("accuracy_change") for r in mine),
                "certified_rate": _mean(meets),
                "both_rate": _mean(m and bool(r.get("compliant")) for r, m in zip(mine, meets)),
                "bound_minus_tau": _mean(b - r["tau"] for r, b, m in zip(mine, bounds, meets) if m),
                "edit_complies_rate": _mean(r.get("edit_complies") for r in mine),
                "conflict_rate": _mean(r.get("conflict") for r in mine if r.get("edit_complies")),
                "kept_move": _mean(r.get("kept_move") for r in mine),
                "median_seconds": (statistics.median([r["seconds"] for r in mine if r.get("seconds") is not None])
                                   if any(r.get("seconds") is not None for r in mine) else None),
            })
    return summary


def report_of(config: Config, tables: dict[str, list[dict]]) -> report.Report:
    rows = tables["metrics.csv"]
    summary = tables["summary.csv"] = summarise(rows)  # from the per-network rows, also with --report-only
    columns = [report.column("requirement", "requirement"), report.column("method", "method"),
               report.column("networks", "networks"), report.column("compliant", "compliance_rate", "{:.0%}"),
               report.column("certified (bound >= tau)", "certified_rate", "{:.0%}"),
               report.column("both", "both_rate", "{:.0%}"),
               report.column("accuracy change (points)", "accuracy_change", "{:+.2f}", 100),
               report.column("bound - tau, where >= tau", "bound_minus_tau", "{:+.4f}"),
               report.column("edit complies (validation)", "edit_complies_rate", "{:.0%}"),
               report.column("conflict, of those", "conflict_rate", "{:.0%}"),
               report.column("move kept by projection", "kept_move", "{:.3f}"),
               report.column("median s", "median_seconds", "{:.1f}")]
    panels = []
    for name in dict.fromkeys(r["requirement"] for r in rows):
        series = []
        for method, compliant, style in (("certified edit", True, "o"), ("certified edit", False, "x"),
                                         ("fine-tuning inside the LID", True, "s"),
                                         ("fine-tuning inside the LID", False, "+")):
            mine = [r for r in rows if r["requirement"] == name and r["method"] == method and r.get("certified")
                    and bool(r.get("compliant")) == compliant]
            if mine:
                series.append(report.Series(f"{method}, {'' if compliant else 'not '}compliant",
                                            [100 * r["accuracy_change"] for r in mine],
                                            [r["certified_accuracy_lower_bound"] - r["tau"] for r in mine], style))
        panels.append(report.Panel(name, "accuracy change (points)", "held-out lower bound - tau", series,
                                   hlines=[(0.0, "tau")]))
    return (report.Report("Certified edits on Adult")
            .paragraph(f"Held-out networks of each requirement's compliance zoo "
                       f"({'all' if config.networks is None else config.networks} per requirement), "
                       f"edited at the calibrated lambda. Utility specification: certified accuracy with a "
                       f"{config.confidence:.0%} held-out lower bound >= tau = train accuracy - {config.delta} "
                       f"({config.bound} bounds, box LIDs). 'compliant': the requirement on the test split; "
                       "'certified': the LID's held-out bound is >= tau (for the plain edit: the bound of that one "
                       "network, with no region around it); 'both': certified and compliant; 'edit complies': the "
                       "edit met the requirement on the validation rows (exactly for pruning and minimisation); "
                       "'conflict': of those, how often projection and compliance conflicted, so the LID was "
                       "re-solved around the edit (metaedit.certified); "
                       "'move kept by projection': the share of the edit's move left after projecting it into the "
                       "original network's box. Seconds include compilation on the first network. The figure shows "
                       "every certified network; the table counts the others too.")
            .table(summary, columns).figure("certified.png", panels, width=4.5))
