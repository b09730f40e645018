"""The quickstart: the project's main job, end to end, in a few minutes on a CPU.

:func:`run_quickstart` trains a zoo, trains one editor for a requirement, edits the held-out
networks across a lambda grid, runs the requirement's post-processing baselines and its first
fine-tuning baseline on the same networks, computes a certified LID for one edited network and
checks it as ``metaedit check`` does, then writes ``report.md``, ``metrics.csv`` and ``pareto.png``.
Every setting is validated by :func:`prepare` before anything is written, so bad input leaves no
output folder behind; intermediate results (zoo, editor, edited network, LID) go to ``<out>/work``,
and a run that is stopped resumes from its checkpoints.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import numpy as np
from tqdm.auto import tqdm

from certify import certificates, guarantee, lid, store
from certify.solver import LIDConfig
from metaedit import certified, compare, datasets, editor, gmn, nets, report, requirements, zoo
from metaedit.datasets import Dataset
from metaedit.options import option
from metaedit.zoo.store import identity as zoo_identity

MIN_MEMBERS = 4


class QuickstartError(ValueError):
    """The quickstart was asked for something it cannot do (the message names the setting)."""


@dataclasses.dataclass(frozen=True)
class QuickstartConfig:
    """Settings of the quickstart; every default runs in a few minutes on a 2-core CPU."""

    requirement: str = option("fairness", "the requirement the editor learns to meet", choices=requirements.NAMES)
    dataset: str = option("adult", "a data set that ships with the package", choices=datasets.SHIPPED)
    csv: str | None = option(None, "your own CSV file with a header row, instead of --dataset (needs --label)")
    label: str | None = option(None, "label column of --csv (two values)")
    sensitive: str | None = option(None, "sensitive attribute: adult sex or race, german sex or age, or a --csv "
                                         "column (each value a group); COLUMN=VALUE sets one group against the rest "
                                         "(default: the data set's own)")
    categorical: tuple[str, ...] = option((), "categorical columns of --csv")
    arch: str = option("mlp:32,32", "architecture of the zoo's networks (mlp:W1,W2,... or cnn:C1,C2,...)")
    members: int = option(512, "networks in the zoo (70% train the editor, 15% validate it, 15% are held out)")
    epochs: float = option(2.0, "passes over the training split of the longest-training network")
    steps: int = option(1500, "editor training steps")
    lambdas: tuple[float, ...] = option((0.0, 0.25, 0.5, 0.75, 1.0), "trade-off weights the editor is evaluated at")
    target: float | None = option(None, "requirement target (default: the requirement's own: gap 0.05, "
                                        "sparsity 0.9, half the feature groups)")
    tau: float | None = option(None, "certified accuracy the LID guarantees on new data at 95% confidence "
                                     "(default: the edited network's own certified accuracy on the certification "
                                     "samples, less 0.03 and the held-out bound's slack)")
    cert_samples: int | None = option(None, "certification samples from the test split (default: min(4096, half "
                                            "the test rows))")
    heldout_samples: int | None = option(None, "held-out samples for the Clopper-Pearson bound (default: the other "
                                               "test rows)")
    lid_steps: int = option(150, "LID solver steps")
    seed: int = option(0, "seeds the zoo, the editor and the samples")
    out: str = option("results/quickstart", "output folder (intermediate results in <out>/work)")
    progress: bool = option(True, "show progress bars")


class Plan(NamedTuple):
    """A validated quickstart: the data, the architecture, the requirement and the derived settings."""

    config: QuickstartConfig
    dataset: Dataset
    spec: nets.Spec
    requirement: requirements.Requirement
    target: float
    zoo: zoo.ZooConfig
    editor: editor.EditorTrainConfig
    cert_samples: int
    heldout_samples: int
    lid: LIDConfig


def prepare(config: QuickstartConfig) -> Plan:
    """Loads the data and checks every setting; raises a named error, and writes nothing."""
    if config.seed < 0:
        raise QuickstartError(f"--seed must be >= 0, got {config.seed}")
    if config.members < MIN_MEMBERS:
        raise QuickstartError(f"--members must be at least {MIN_MEMBERS}: the editor trains on 70% of the "
                              f"networks, is validated on 15% and evaluated on the 15% held out; got {config.members}")
    for lam in config.lambdas:
        editor.check_lambda(lam)
    if not config.lambdas:
        raise QuickstartError("--lambdas is empty: give at least one trade-off weight")
    if config.tau is not None and not 0 < config.tau <= 1:
        raise QuickstartError(f"--tau must lie in (0, 1], got {config.tau}")
    dataset = datasets.load_named(config.dataset, config.csv, config.label, config.sensitive, config.categorical)
    spec = nets.parse_arch(config.arch, dataset.input_shape, dataset.num_classes)
    zoo.check_fits(spec, dataset)
    requirement = requirements.for_dataset(config.requirement, dataset)
    requirement.check(spec, dataset)
    target = requirement.default_target() if config.target is None else requirement.check_target(config.target)
    zoo_config = zoo.ZooConfig(members=config.members, epochs=config.epochs, seed=config.seed)
    editor_config = editor.EditorTrainConfig(requirement=config.requirement, steps=config.steps,
                                             chunk_steps=max(1, min(100, config.steps // 5)), seed=config.seed)
    cert, heldout = lid.default_sample_counts(len(dataset.y_test), config.cert_samples, config.heldout_samples)
    lid.certification_rows(len(dataset.y_test), cert, heldout, config.seed)  # raises if they do not fit
    lid_config = LIDConfig(steps=config.lid_steps, seed=config.seed)
    return Plan(config, dataset, spec, requirement, target, zoo_config, editor_config, cert, heldout, lid_config)


def _stage(message: str, log: Callable[[str], None]) -> float:
    log(message)
    return time.perf_counter()


def run_quickstart(config: QuickstartConfig, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> dict:
    """Runs the quickstart (see the module docstring); returns a summary with the rows, the LID check
    and the seconds of each stage."""
    plan = prepare(config)
    out, work = Path(config.out), Path(config.out) / "work"
    dataset, spec, requirement = plan.dataset, plan.spec, plan.requirement
    log(f"{dataset}; {nets.describe(spec)}; requirement {requirement.name} at target {plan.target}; "
        f"certification samples {plan.cert_samples} and held-out samples {plan.heldout_samples} "
        f"(of {len(dataset.y_test)} test rows)")
    seconds: dict[str, float] = {}
    started = _stage(f"[1/5] training a zoo of {config.members} networks", log)
    trained = zoo.train_zoo(spec, dataset, plan.zoo, workdir=work / "zoo", progress=config.progress)
    seconds["zoo"] = time.perf_counter() - started
    started = _stage(f"[2/5] training a {requirement.name} editor ({config.steps} steps)", log)
    trained_editor = editor.train_editor(spec, trained.subset("train"), dataset, plan.editor, workdir=work / "editor",
                                         progress=config.progress, validation=trained.subset("val"),
                                         identity={"zoo": zoo_identity(spec, plan.zoo, dataset.source)})
    seconds["editor"] = time.perf_counter() - started
    held_out = jax.tree.map(np.asarray, trained.subset("test"))
    started = _stage(f"[3/5] editing the {nets.population_size(held_out)} held-out networks at lambda "
                     f"{', '.join(map(str, config.lambdas))}", log)
    rows = compare.evaluate_editor(trained_editor, spec, requirement, held_out, dataset, config.lambdas, plan.target,
                                   progress=config.progress)
    seconds["edits"] = time.perf_counter() - started
    table = requirement.baselines()
    chosen = [n for n, b in table.items() if b.family == "post-processing"]
    chosen += [n for n, b in table.items() if b.family == "fine-tuning"][:1]
    started = _stage(f"[4/5] baselines on the same networks: {', '.join(chosen)}", log)
    for name in tqdm(chosen, desc="baselines", disable=not config.progress):
        rows += compare.evaluate_baselines(requirement, spec, held_out, dataset, plan.target, only=[name])
    seconds["baselines"] = time.perf_counter() - started
    started = _stage("[5/5] a certified edit of one held-out network", log)
    certified_one = _certify_one(plan, trained_editor, held_out, work)
    seconds["lid"] = time.perf_counter() - started
    written = _write(plan, trained, rows, certified_one, seconds, out)
    return {"rows": rows, "lid": certified_one, "seconds": seconds, "report": str(written)}


def _certify_one(plan: Plan, trained_editor: gmn.Editor, held_out: nets.Params, work: Path) -> dict:
    """The certified edit of held-out network 0 (:func:`metaedit.certified.certified_edit`) at the
    calibrated lambda (its least invasive compliant edit): saved with its LID, and checked as
    ``metaedit check`` does. Not certified: the reason, and nothing saved."""
    config, spec, dataset, requirement = plan.config, plan.spec, plan.dataset, plan.requirement
    bar = tqdm(total=3, desc="certifying", unit="stage", disable=not config.progress)
    original = jax.tree.map(lambda leaf: leaf[0], held_out)
    edited, lam, _ = certified.edit_network(trained_editor, spec, requirement, original, "auto", plan.target, dataset)
    cert_rows, heldout_rows = lid.certification_rows(len(dataset.y_test), plan.cert_samples, plan.heldout_samples,
                                                     config.seed)
    tau = config.tau
    if tau is None:  # from the certification rows only: 3 points under the edit, less the held-out bound's slack
        point = certificates.point_certified_accuracy(spec, edited, dataset.x_test[cert_rows],
                                                      dataset.y_test[cert_rows])
        slack = guarantee.needed_rate(point, len(heldout_rows), 0.95) - point
        tau = max(0.01, round(point - 0.03 - (slack if np.isfinite(slack) else 0.1), 3))
    bar.update()
    fallback = None
    for kind in guarantee.GUARANTEES:  # distribution first; too few held-out rows for it: the samples
        result = certified.certified_edit(trained_editor, spec, requirement, original, dataset, lam, tau, plan.target,
                                          plan.lid, guarantee_kind=kind, rows=(cert_rows, heldout_rows),
                                          edited=edited)
        if result.certified:
            break
        fallback = fallback or result.message
    bar.update()
    summary = {**result.row(), "params": None, "lid": None, "message": result.message, "fallback": fallback}
    if result.certified:
        params_file = work / "edited.npz"
        certified.save(work / "lid", spec, result, dataset, plan.lid.margin_tol)
        nets.save_params(params_file, spec, jax.tree.map(np.asarray, result.params))
        summary.update(store.check(work / "lid", result.params, spec), params=str(params_file))
    bar.update()
    bar.close()
    return summary


def _certified_lines(certified: dict, requirement: str, target: float) -> list[str]:
    """The report's lines on the certified edit (``_certify_one``'s summary)."""
    lines = [f"held-out network 0 edited at the calibrated lambda {certified['lambda']}: {requirement} "
             f"{certified['requirement_value']:.4f} ({'compliant' if certified['compliant'] else 'not compliant'} at "
             f"{target}), accuracy change {100 * certified['accuracy_change']:+.2f} points"]
    if not certified["certified"]:
        return lines + [f"not certified at tau {certified['tau']}: {certified['message']}"]
    return lines + [
        f"certified ({certified['resolution']}: " + ("the edit projected into a box LID of the original network"
                                                     if certified["resolution"] == "inside" else
                                                     "projection and compliance conflict, so a fresh LID around the "
                                                     "edit, its zeros held at zero") + f"), tau {certified['tau']}",
        (f"held-out: {certified['heldout_certified_accuracy']:.4f} on {certified['heldout_samples']} samples; "
         f"{certified['confidence']:.0%} Clopper-Pearson lower bound {certified['certified_accuracy_lower_bound']:.4f}"
         + (" >= tau: the guarantee holds for every network in the LID" if certified["guarantee"] == "distribution"
            else f"; guarantee on the {certified['cert_samples']} certification samples only (certified accuracy "
                 f"{certified['certified_accuracy']:.4f} >= tau): {certified['fallback']}")),
        f"`metaedit check --lid {certified['lid']} --params {certified['params']}`: inside {certified['inside']}, "
        f"mean log-width {certified['mean_log_width']:.3f}",
    ]


def _write(plan: Plan, trained: zoo.Zoo, rows: list[dict], certified: dict, seconds: dict, out: Path) -> Path:
    config, requirement = plan.config, plan.requirement
    columns = [report.column("method", "method"), report.column("setting", "setting"),
               report.column(requirement.name, "value", "{:.4f}"),
               report.column("compliant", "compliance_rate", "{:.0%}"),
               report.column("accuracy change (points)", "accuracy_change", "{:+.2f}", 100),
               report.column("constant predictors", "constant_fraction", "{:.0%}"),
               report.column("ms per edit", "seconds_per_edit", "{:.2f}", 1000)]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    pareto = report.Panel(f"{requirement.name} on {plan.dataset.name}", requirement.description.split(";")[0],
                          "accuracy change (points)",
                          [report.Series(m, [r["value"] for r in rows if r["method"] == m],
                                         [100 * r["accuracy_change"] for r in rows if r["method"] == m])
                           for m in methods], vlines=[(plan.target, f"target {plan.target}")])
    split = {k: len(v) for k, v in trained.split.items()}
    lid_lines = _certified_lines(certified, requirement.name, plan.target)
    page = (report.Report(f"Quickstart: {requirement.name} on {plan.dataset.name}")
            .paragraph(f"A zoo of {config.members} `{nets.describe(plan.spec)}` networks ({split['train']} train the "
                       f"editor, {split['val']} validate it, {split['test']} are held out) and one editor trained for "
                       f"{config.steps} steps. The editor edits every held-out network at each lambda in one batched "
                       f"call; the baselines run on the same networks. Target {plan.target}; accuracy change is the "
                       "mean over networks on the test split; times are warm (compilation excluded on both sides).")
            .table(rows, columns).figure("pareto.png", [pareto])
            .heading("A certified edit of one held-out network").bullets(lid_lines)
            .paragraph("Seconds per stage: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items())
                       + f"; total {sum(seconds.values()):.1f}."))
    written = page.write(out, {"metrics.csv": rows})
    print("\n".join(report.markdown_table(rows, columns)))
    print("\n".join(["", "certified edit:"] + [f"  {line}" for line in lid_lines]))
    print(f"\nwrote {written} ({sum(seconds.values()):.0f} s)")
    return written

