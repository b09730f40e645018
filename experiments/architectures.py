"""Experiment family: one editor trained on a mixed zoo edits networks of an architecture it never saw.

One zoo per training architecture (a mixed zoo, as ``metaedit zoo --arch A B ...`` writes) and one
zoo of the unseen architecture are trained on the same data set. Two editors are trained for the
requirement: the *mixed* editor on the training networks of every training architecture, and the
*dedicated* editor on the training networks of the unseen architecture alone. Both edit the held-out
networks of the unseen architecture across a lambda grid and in the calibrated mode. Table:
``metrics.csv`` (one row per editor and setting, columns of :mod:`metaedit.compare`); figure:
``pareto.png``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import numpy as np

from experiments import compliance
from metaedit import compare, datasets, editor, nets, report, requirements, zoo
from metaedit.editor import EditorTrainConfig
from metaedit.options import option
from metaedit.zoo import ZooConfig

TABLES = ("metrics.csv",)


@dataclasses.dataclass(frozen=True)
class Config:
    """The unseen-architecture experiment."""

    title: str = option("One editor for many architectures", "the report's title", flag=False)
    dataset: str = option("adult", "data set", choices=datasets.SHIPPED)
    train_archs: str = option("mlp:16 mlp:32 mlp:64 mlp:16,16 mlp:32,32 mlp:64,64 mlp:32,32,32",
                              "architectures of the mixed zoo, separated by spaces")
    unseen_arch: str = option("mlp:48,48", "the architecture the mixed editor never sees")
    zoo: ZooConfig = option(ZooConfig(members=128, epochs=2, seed=0), "each architecture's zoo", flag=False)
    unseen_members: int = option(256, "members of the unseen architecture's zoo (its dedicated editor trains on "
                                      "its training networks)")
    editor: EditorTrainConfig = option(EditorTrainConfig(requirement="pruning", keep="best"), "editor training "
                                       "(keep 'best': the dedicated editor's last chunk diverged once)", flag=False)
    target: float | None = option(None, "requirement target (default: the requirement's own)")
    lambdas: tuple[float, ...] = option((0.0, 0.25, 0.5, 0.75, 1.0), "trade-off weights the editors are evaluated at")
    reuse_editor: bool = option(False, "load each finished editor from <out>/editors" + compliance.REUSE_EDITOR_HELP)
    out: str = option("results/architectures", "output folder")


def _zoo(config: Config, dataset, arch: str, members: int, seed: int) -> zoo.Zoo:
    spec = nets.parse_arch(arch, dataset.input_shape, dataset.num_classes)
    zoo_config = dataclasses.replace(config.zoo, members=members, seed=seed)
    return zoo.train_zoo(spec, dataset, zoo_config, workdir=Path(config.out) / "zoos" / zoo.arch_folder(arch),
                         progress=False)


def run(config: Config) -> dict[str, list[dict]]:
    out = Path(config.out)
    dataset = datasets.load_dataset(config.dataset)
    archs = config.train_archs.split()
    if config.unseen_arch in archs:
        raise ValueError(f"--unseen-arch {config.unseen_arch} is one of the training architectures")
    mixed = [_zoo(config, dataset, arch, config.zoo.members, config.zoo.seed + 1000 * i)
             for i, arch in enumerate(archs)]
    unseen = _zoo(config, dataset, config.unseen_arch, config.unseen_members, config.zoo.seed + 999)
    requirement = requirements.for_dataset(config.editor.requirement, dataset)
    target = requirement.default_target() if config.target is None else config.target
    held_out = jax.tree.map(np.asarray, unseen.subset("test"))
    rows = []
    for name, zoos in (("mixed editor", mixed), ("dedicated editor", [unseen])):
        workdir = out / "editors" / name.split()[0]
        finished = compliance.finished_editor(workdir)
        started = time.perf_counter()
        trained = (compliance.reusable_editor(workdir, config.editor.requirement, config.editor.steps)
                   if config.reuse_editor else None)
        if trained is None:  # another run's checkpoint there makes train_editor say how it differs
            trained = editor.train_editor([z.spec for z in zoos], [z.subset("train") for z in zoos], dataset,
                                          config.editor, workdir=workdir, progress=False,
                                          validation=[z.subset("val") for z in zoos])
        seconds = float("nan") if finished else time.perf_counter() - started  # a finished editor is only loaded
        for row in compare.evaluate_editor(trained, unseen.spec, requirement, held_out, dataset, config.lambdas,
                                           target, group_shift=False, imputed=False):  # editor rows only
            rows.append({**row, "method": name.replace("editor", row["method"]), "editor_train_seconds": seconds,
                         "train_archs": " ".join(nets.describe(z.spec) for z in zoos),
                         "train_networks": sum(len(z.split["train"]) for z in zoos),
                         "networks": nets.population_size(held_out)})
    return {"metrics.csv": rows}


def report_of(config: Config, tables: dict[str, list[dict]]) -> report.Report:
    rows = tables["metrics.csv"]
    panel = compliance.front_panel(f"{config.unseen_arch} networks", config.editor.requirement, rows)
    columns = [report.column("editor", "method"), *compliance.OUTCOME_COLUMNS,
               report.column("trained on", "train_archs"), report.column("train s", "editor_train_seconds", "{:.0f}")]
    return (report.Report(config.title)
            .paragraph(f"`{config.editor.requirement}` at target {rows[0]['target']} on {rows[0]['networks']} held-out "
                       f"{config.unseen_arch} networks ({config.dataset}). The mixed editor was trained on "
                       f"{', '.join(config.train_archs.split())} and never saw {config.unseen_arch}; the dedicated editor was "
                       f"trained on {config.unseen_arch} networks alone.")
            .table(rows, columns).figure("pareto.png", [panel]))
