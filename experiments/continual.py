"""Experiment family: safe continual learning inside certified LIDs against the usual heuristics.

Every method trains the same network (an MLP, or the safe-updates paper's Split MNIST CNN,
:func:`metaedit.nets.paper_cnn`) through the 5 class-pair tasks of the split data set, in the
task-, domain- or class-incremental scenario. The safe
variants (:mod:`certify.continual.safe`) train each task inside a box LID certifying every earlier
task; the baselines (:mod:`certify.continual.baselines`: naive, L2, EWC, SI, LwF, A-GEM, replay with
two buffer sizes) run vmapped over the seeds. Tables: ``metrics.csv`` (one row per method and seed) and
``certificates.csv`` (every old task's certificate after every task, per seed); figure:
``accuracy.png`` (final accuracy per task).
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np

from certify import continual
from certify.continual import baselines, safe
from metaedit import datasets, nets, report
from metaedit.options import option

TABLES = ("metrics.csv", "certificates.csv")

BASELINES = (  # name, method, options; strengths tuned on domain-incremental Split MNIST-5k
    ("naive", "naive", ()), ("l2", "l2", (("strength", 1.0),)), ("ewc", "ewc", (("strength", 1e4),)),
    ("si", "si", (("strength", 10.0),)), ("lwf", "lwf", (("strength", 1.0),)), ("a-gem", "agem", (("memory_per_task", 50),)),
    ("replay-10", "replay", (("memory_per_task", 10),)), ("replay-50", "replay", (("memory_per_task", 50),)),
)
SAFE = (  # name, SafeConfig overrides
    ("lid", ()), ("lid-fisher", (("bias", "fisher"),)), ("lid-update", (("bias", "update"),)),
    ("lid-lookahead", (("bias", "lookahead"),)), ("lid-update-closest", (("bias", "update"), ("strategy", "closest"))),
    ("lid-update-largest-closest", (("bias", "update"), ("strategy", "largest-closest"))),
    ("lid-update-best-loss", (("bias", "update"), ("strategy", "best-loss"))),
    ("lid-pool-closest", (("bias", "update"), ("pool", "biases"), ("strategy", "closest"))),
    ("lid-pool-best-loss", (("bias", "update"), ("pool", "biases"), ("strategy", "best-loss"))),
    ("lid-recentred", (("recentre", None),)), ("lid-update-recentred", (("bias", "update"), ("recentre", None))),
)  # recentre None: the config's ``recentre``
MEMORY = ("a-gem", "replay-10", "replay-50")


@dataclasses.dataclass(frozen=True)
class Config:
    """A continual-learning experiment."""

    dataset: str = option("mnist5k", "the data set split into 5 class-pair tasks", choices=("mnist5k", "digits", "mnist1d"))
    scenario: str = option("domain", "incremental scenario", choices=("task", "domain", "class"))
    net: str = option("mlp", "the network: an MLP of `hidden` units, or the safe-updates paper's Split MNIST CNN "
                             "(conv 1->8 5x5 valid, conv 8->1 5x5 same, dense 576->outputs)", choices=("mlp", "paper-cnn"))
    seeds: int = option(5, "seeds per method")
    first_seed: int = option(0, "the first seed (seeds first_seed .. first_seed + seeds - 1; runs of other seeds "
                                "can be merged, e.g. run in parallel)")
    hidden: int = option(100, "the MLP's hidden width")
    cert_samples: int = option(256, "safe variants: certification samples per task")
    steps: int = option(300, "training steps per task")
    delta: float = option(0.2, "safe variants: tau = min(max(acc - delta, acc / 2), tau_max)")
    tau_max: float = option(0.9, "safe variants: the largest tau")
    recentre: int = option(4, "the -recentred safe variants: box LIDs per new task (the task's steps cut into this "
                              "many parts; a new LID around the parameters before each part after the first)")
    only: tuple[str, ...] = option((), "a subset of the methods (default: all)")
    out: str | None = option(None, "output folder (default: results/continual for domain-incremental Split "
                                   "MNIST-5k, else results/continual_<dataset>_<scenario>)")


def default_out(config: Config) -> str:
    if config.net == "paper-cnn":
        return f"results/continual_paper_{config.scenario}" + ("" if config.dataset == "mnist5k" else f"_{config.dataset}")
    if (config.dataset, config.scenario) == ("mnist5k", "domain"):
        return "results/continual"
    return f"results/continual_{config.dataset}_{config.scenario}"


def network(config: Config, sequence) -> nets.Spec:
    """The config's network for the sequence's inputs and outputs."""
    if config.net == "paper-cnn":
        return nets.paper_cnn(sequence.input_shape, sequence.num_outputs)
    return nets.MLPSpec(sequence.input_shape, (config.hidden,), sequence.num_outputs)


def run(config: Config) -> dict[str, list[dict]]:
    sequence = continual.split(datasets.load_dataset(config.dataset), config.scenario)
    spec = network(config, sequence)
    seeds = list(range(config.first_seed, config.first_seed + config.seeds))
    chosen = lambda name: not config.only or name in config.only  # noqa: E731
    rows, certificate_rows = [], []
    for name, method, options in BASELINES:
        if chosen(name):
            result = baselines.run(method, spec, sequence, seeds, steps_per_task=config.steps, **dict(options))
            rows += [_row(name, s, matrix, result.seconds / len(seeds)) for s, matrix in zip(seeds, result.matrix)]
            print(f"{name}: final average {np.mean([r['average'] for r in rows[-len(seeds):]]):.3f}", flush=True)
    for name, overrides in SAFE:
        if not chosen(name):
            continue
        options = {k: config.recentre if (k, v) == ("recentre", None) else v for k, v in overrides}
        label = f"{name}-{config.recentre}" if "recentre" in options else name  # e.g. lid-update-recentred-30
        for s in seeds:
            safe_config = safe.SafeConfig(steps_per_task=config.steps, delta=config.delta, tau_max=config.tau_max,
                                          cert_samples=config.cert_samples, seed=s, **options)
            result = safe.train_safely(spec, sequence, safe_config)
            final = [c for c in result.certificates if c.after == sequence.num_tasks - 1]
            row = _row(label, s, result.matrix, result.seconds)
            row.update(inside=all(result.inside), holds=all(c.holds for c in result.certificates),
                       min_certified_minus_tau=min((c.certified_accuracy - c.tau for c in result.certificates), default=None),
                       final_min_lower_bound=min((c.lower_bound for c in final), default=None),
                       picks=" ".join(result.picks))
            if result.meta_history:
                row["meta_loss_first"] = float(np.mean([h[0] for h in result.meta_history]))
                row["meta_loss_last"] = float(np.mean([min(h) for h in result.meta_history]))
            rows.append(row)
            certificate_rows += [{"method": label, "seed": s, **c._asdict()} for c in result.certificates]
        print(f"{label}: final average {np.mean([r['average'] for r in rows[-len(seeds):]]):.3f}", flush=True)
    return {"metrics.csv": rows, "certificates.csv": certificate_rows}


def _mean_of_known(values) -> str:
    """The mean of the values that are not None, to 3 places ("-" when none is known)."""
    known = [v for v in values if v is not None]
    return f"{np.mean(known):.3f}" if known else "-"


def _network_words(config: Config) -> str:
    if config.net == "paper-cnn":
        return "The safe-updates paper's CNN (conv 1->8 5x5 valid, conv 8->1 5x5 same, dense 576->outputs)"
    return f"MLP with {config.hidden} hidden units"


def _row(name, seed, matrix, seconds) -> dict:
    matrix = np.asarray(matrix)
    return {"method": name, "seed": seed, "average": float(continual.average_accuracy(matrix)),
            "forgetting": float(continual.forgetting(matrix)), "seconds": float(seconds),
            "new_task": float(np.mean(np.diag(matrix)[1:])),
            **{f"final_task{j}": float(matrix[-1, j]) for j in range(matrix.shape[1])},
            "matrix": np.round(matrix, 4).tolist()}


def report_of(config: Config, tables: dict[str, list[dict]]) -> report.Report:
    rows = tables["metrics.csv"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    summary = []
    for m in methods:
        sel = [r for r in rows if r["method"] == m]
        stat = lambda k: f"{np.mean([r[k] for r in sel]):.3f} +- {np.std([r[k] for r in sel]):.3f}"  # noqa: E731,B023
        certified = "holds" in sel[0] and sel[0]["holds"] is not None
        summary.append({"method": m + (" (memory)" if m in MEMORY else ""), "average": stat("average"),
                        "forgetting": stat("forgetting"), "new_task": stat("new_task"),
                        "certified": f"{sum(bool(r['holds'] and r['inside']) for r in sel)}/{len(sel)}"
                        if certified else "no certificate",
                        "bound": _mean_of_known([r["final_min_lower_bound"] for r in sel]) if certified else "-",
                        "seconds": f"{np.mean([r['seconds'] for r in sel]):.1f}"})
    columns = [report.column(h, k) for h, k in (
        ("method", "method"), ("final average accuracy", "average"), ("forgetting", "forgetting"),
        ("new-task accuracy", "new_task"), ("certified (every old task >= tau, params inside)", "certified"),
        ("min held-out CP bound after the last task", "bound"), ("seconds per seed", "seconds"))]
    tasks = len([k for k in rows[0] if k.startswith("final_task")])
    panel = report.Panel("final accuracy per task", "task", "final test accuracy", [
        report.Series(m, list(range(tasks)), [np.mean([r[f"final_task{j}"] for r in rows if r["method"] == m])
                                              for j in range(tasks)]) for m in methods])
    page = (report.Report(f"Continual learning on Split {config.dataset} ({config.scenario}-incremental)")
            .paragraph(f"{_network_words(config)}, 5 tasks of class pairs, {config.steps} steps per task, "
                       f"{len({r['seed'] for r in rows})} seeds (mean +- std). Safe variants: tau_t = min(max(acc_t - {config.delta}, "
                       f"acc_t / 2), {config.tau_max}) on {config.cert_samples} certification samples per task; "
                       "certificates are checked after every task (certified accuracy on the certification samples "
                       ">= tau, and the trained parameters inside the LID)"
                       + ("; in the task-incremental scenario each task is trained, evaluated and certified on its "
                          "own classes' logits." if config.scenario == "task" else "."))
            .table(summary, columns))
    meta = [r for r in rows if r.get("meta_loss_first") is not None]
    if meta:
        page.paragraph(f"Lookahead bias learning: buffer loss after the projected lookahead steps went from "
                       f"{np.mean([r['meta_loss_first'] for r in meta]):.4f} (update-direction start) to "
                       f"{np.mean([r['meta_loss_last'] for r in meta]):.4f} (the best learnt bias), mean over seeds and "
                       "task boundaries.")
    origins = {m: Counter(pick.split("@")[0] for r in rows if r["method"] == m
                          for pick in str(r.get("picks") or "").split()) for m in methods if "pool" in m}
    counted = [f"{m}: " + ", ".join(f"{bias} {n}" for bias, n in counts.most_common())
               for m, counts in origins.items() if counts]
    if counted:
        page.paragraph("Where the pooled strategies' LIDs came from (the bias weighting of the solve, or kept: a "
                       "re-centring kept the current box; over seeds and task boundaries): " + "; ".join(counted) + ".")
    page.paragraph("New-task accuracy: test accuracy on task t right after training it, mean over t >= 1. Forgetting: "
                   "mean over old tasks of the best earlier accuracy minus the final one. Seconds per seed include "
                   "compilation for the safe variants (each seed is its own run) and exclude it for the vmapped "
                   "baselines.")
    page.paragraph("Accuracy matrices (first seed): row i = after task i.")
    page.bullets([f"{m}: {next(r for r in rows if r['method'] == m)['matrix']}" for m in methods])
    return page.figure("accuracy.png", [panel], 7, 4)
