"""Experiment family: one editor against a requirement's baselines on the same held-out networks.

A zoo is trained (or loaded) and one editor is trained for the requirement on the zoo's training
networks; on the held-out networks the editor is evaluated across a lambda grid at the target, and
every baseline of the requirement at each of its strengths. Tables: ``metrics.csv`` (one row per
method and setting, see :mod:`metaedit.compare`); figure: ``pareto.png`` (requirement value against
accuracy change).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from metaedit import checkpoint, compare, datasets, editor, gmn, nets, report, requirements, zoo
from metaedit.editor import EditorTrainConfig
from metaedit.options import option
from metaedit.zoo import ZooConfig

TABLES = ("metrics.csv",)
REUSE_EDITOR_HELP = (" as it is, even if editor settings added since have other defaults (its training time is then "
                     "unknown)")


@dataclasses.dataclass(frozen=True)
class Config:
    """A compliance experiment."""

    title: str = option("compliance", "the report's title", flag=False)
    dataset: str = option("adult", "data set", choices=datasets.SHIPPED)
    sensitive: str | None = option(None, "sensitive attribute (default: the data set's own)")
    arch: str = option("mlp:32,32", "architecture of the zoo's networks")
    zoo: ZooConfig = option(ZooConfig(members=256, epochs=2, seed=0), "the zoo", flag=False)
    editor: EditorTrainConfig = option(EditorTrainConfig(), "editor training (its steps: --steps)", flag=False)
    steps: int | None = option(None, "editor training steps (default: the editor's own, as train-editor)")
    target: float | None = option(None, "requirement target (default: the requirement's own)")
    lambdas: tuple[float, ...] = option((0.0, 0.25, 0.5, 0.75, 0.9, 1.0), "trade-off weights the editor is evaluated at")
    strengths: tuple[tuple[str, tuple[float, ...]], ...] = option((), "strengths per baseline (default: each "
                                                                      "baseline's own)", flag=False)
    out: str = option("results/compliance", "output folder")
    reuse_editor: bool = option(False, "load a finished editor from <out>/editor" + REUSE_EDITOR_HELP)


class Trained(NamedTuple):
    """A compliance config's data, networks, zoo, editor and requirement, trained or loaded."""

    dataset: datasets.Dataset
    spec: nets.Spec
    zoo: zoo.Zoo
    editor: gmn.Editor
    requirement: requirements.Requirement
    target: float
    steps: int
    train_seconds: float


def trained(config: Config, reuse_finished: bool = False) -> Trained:
    """The zoo and the editor of ``config`` (trained into ``<out>/zoos`` and ``<out>/editor``, or
    resumed from there). ``reuse_finished``: a finished editor there, for the same requirement and
    steps, is loaded as it is, even if settings added since then have other defaults (its training
    time is then unknown: NaN)."""
    out = Path(config.out)
    dataset = datasets.load_dataset(config.dataset, **({"sensitive": config.sensitive} if config.sensitive else {}))
    spec = nets.parse_arch(config.arch, dataset.input_shape, dataset.num_classes)
    networks = zoo.train_zoo(spec, dataset, config.zoo, workdir=out / "zoos" / config.dataset, progress=False)
    requirement = requirements.for_dataset(config.editor.requirement, dataset)
    target = requirement.default_target() if config.target is None else config.target
    steps = config.editor.steps if config.steps is None else config.steps
    editor_config = dataclasses.replace(config.editor, steps=steps, chunk_steps=max(1, steps // 10))
    found = reusable_editor(out / "editor", editor_config.requirement, steps) if reuse_finished else None
    if found is not None:
        return Trained(dataset, spec, networks, found, requirement, target, steps, float("nan"))
    finished = finished_editor(out / "editor")
    started = time.perf_counter()
    trained_editor = editor.train_editor(spec, networks.subset("train"), dataset, editor_config, workdir=out / "editor",
                                         progress=False, validation=networks.subset("val"))
    seconds = float("nan") if finished else time.perf_counter() - started  # a finished editor is only loaded
    return Trained(dataset, spec, networks, trained_editor, requirement, target, steps, seconds)


def reusable_editor(workdir: Path, requirement: str, steps: int) -> gmn.Editor | None:
    """The finished editor in ``workdir``, loaded as it is, if it was trained for ``requirement`` in
    ``steps`` steps; else None (nothing finished there, or another run: train or resume instead)."""
    try:
        found, record = editor.load_editor(workdir)
    except (checkpoint.CheckpointError, editor.EditorTrainingError):
        return None
    return found if (record["config"]["requirement"], record["config"]["steps"]) == (requirement, steps) else None


def finished_editor(workdir: Path) -> bool:
    """Whether ``workdir`` holds a finished editor run (loading it is not training it)."""
    try:
        return bool(checkpoint.read_record(workdir)[1].get("complete"))
    except checkpoint.CheckpointError:
        return False


def run(config: Config) -> dict[str, list[dict]]:
    setup = trained(config, reuse_finished=config.reuse_editor)
    dataset, spec, requirement, target = setup.dataset, setup.spec, setup.requirement, setup.target
    held_out = jax.tree.map(np.asarray, setup.zoo.subset("test"))
    rows = compare.evaluate_editor(setup.editor, spec, requirement, held_out, dataset, config.lambdas, target)
    rows += compare.evaluate_baselines(requirement, spec, held_out, dataset, target, dict(config.strengths))
    for row in rows:
        row.update(editor_train_seconds=setup.train_seconds, editor_steps=setup.steps,
                   networks=nets.population_size(held_out))
    return {"metrics.csv": rows}


OUTCOME_COLUMNS = (report.column("setting", "setting"), report.column("value", "value", "{:.4f}"),
                   report.column("accuracy change", "accuracy_change", "{:+.2f}", 100),
                   report.column("compliant", "compliance_rate", "{:.3f}"),
                   report.column("constant", "constant_fraction", "{:.2f}"))
"""The columns of one method's setting and outcome in a compliance table."""


def front_panel(title: str, requirement_name: str, rows: list[dict]) -> report.Panel:
    """Requirement value against accuracy change (points), one series per method, the target marked."""
    requirement = requirements.get(requirement_name, ((0,),))
    target = rows[0]["target"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    return report.Panel(title, requirement.description.split(";")[0], "accuracy change (points)",
                        [report.Series(m, [r["value"] for r in rows if r["method"] == m],
                                       [100 * r["accuracy_change"] for r in rows if r["method"] == m]) for m in methods],
                        vlines=[(target, f"target {target}")])


def _seconds(value: float) -> str:
    return "loaded from an earlier run" if np.isnan(value) else f"{value:.0f} s"


def report_of(config: Config, tables: dict[str, list[dict]]) -> report.Report:
    rows = tables["metrics.csv"]
    target = rows[0]["target"]
    panel = front_panel(config.title, config.editor.requirement, rows)
    columns = [report.column("method", "method"), *OUTCOME_COLUMNS,
               report.column("ms per edit", "seconds_per_edit", "{:.2f}", 1000)]
    return (report.Report(config.title)
            .paragraph(f"One editor trained for `{config.editor.requirement}` ({_seconds(rows[0]['editor_train_seconds'])}, "
                       f"{rows[0]['editor_steps']} steps), evaluated on {rows[0]['networks']} held-out networks at target "
                       f"{target}, against the baselines on the same networks. Accuracy change is the mean over "
                       "networks, in points; compliance is the fraction of networks meeting the target; 'constant' is "
                       "the fraction of networks predicting one class only; times are warm (compilation excluded).")
            .table(rows, columns).figure("pareto.png", [panel]))
