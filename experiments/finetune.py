"""Experiment family: certified fine-tuning of a frozen feature extractor's head on a shifted task.

Per seed: a digits CNN (cnn:16,16) is pretrained on the original task A and frozen; an MLP head
(16 -> 32 -> 10) is trained on its pooled features. The head gets a box LID certifying task A
(tau = min(max(acc - delta, acc / 2), tau_max) on 256 certification samples) and is then fine-tuned
on task B, the same digits mirrored left to right, by projected Adam; the unconstrained fine-tuning
of the same head is the comparison. After every epoch the run checks that the head lies inside the
LID, so task A's certificate (and its held-out Clopper-Pearson bound) holds throughout. Table:
``metrics.csv`` (one row per seed); figure: ``curves.png``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from certify import certificates, lid
from certify.continual import safe
from certify.solver import LIDConfig
from metaedit import datasets, nets, report, requirements
from metaedit.options import option

TABLES = ("metrics.csv",)


@dataclasses.dataclass(frozen=True)
class Config:
    """The fine-tuning experiment."""

    seeds: int = option(5, "seeds")
    epochs: int = option(10, "epochs of fine-tuning on task B")
    steps_per_epoch: int = option(100, "Adam steps per epoch")
    delta: float = option(0.1, "tau = min(max(acc - delta, acc / 2), tau_max) for task A")
    tau_max: float = option(0.9, "the largest tau for task A")
    bias: str = option("update", "LID bias weights: none, or room along task B's gradient on a lookahead buffer",
                       choices=("none", "update"))
    out: str = option("results/finetune", "output folder")


def _accuracy(spec, params, x, y) -> float:
    return float(requirements.accuracy(spec, params, x, y))


def one_seed(config: Config, seed: int) -> dict:
    """One pretrained extractor and head, its task-A LID, and safe against unconstrained fine-tuning."""
    data = datasets.load_dataset("digits")
    cnn = nets.CNNSpec(data.input_shape, (16, 16), data.num_classes)
    key = jax.random.key(seed)
    xa, ya = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    xa_test, ya_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
    xb, xb_test = xa[:, :, ::-1], xa_test[:, :, ::-1]  # task B: mirrored digits
    extractor = safe.projected_steps_jit(cnn, nets.init(cnn, jax.random.fold_in(key, 0)), None, xa, ya, 1500, 3e-3,
                                         64, jax.random.fold_in(key, 1))
    feat = jax.jit(lambda x: nets.features(cnn, extractor, x))
    fa, fa_test, fb, fb_test = feat(xa), feat(xa_test), feat(xb), feat(xb_test)
    head_spec = nets.MLPSpec((fa.shape[1],), (32,), data.num_classes)
    head = safe.projected_steps_jit(head_spec, nets.init(head_spec, jax.random.fold_in(key, 2)), None, fa, ya, 1500,
                                    3e-3, 64, jax.random.fold_in(key, 3))
    rng = np.random.default_rng(seed)
    rows = rng.permutation(len(ya))[:256]
    cert_x, cert_y = fa[rows], ya[rows]
    point = certificates.point_certified_accuracy(head_spec, head, cert_x, cert_y)
    constraint = certificates.Constraint(cert_x, cert_y, safe.tau_rule(point, config.delta, config.tau_max))
    weights = None
    if config.bias == "update":  # room along task B's gradient, from a 64-sample lookahead buffer of task B
        buffer = rng.permutation(len(ya))[:64]
        weights = safe.update_bias(head_spec, head, fb[buffer], ya[buffer])
    chosen = lid.compute(head_spec, head, [constraint], [(fa_test, ya_test)], LIDConfig(steps=300, snapshot_every=50, learning_rate=0.05),
                         bias=weights).best
    record = {"seed": seed, "tau": constraint.tau, "task_a_before": _accuracy(head_spec, head, fa_test, ya_test),
              "task_b_before": _accuracy(head_spec, head, fb_test, ya_test),
              "certified_a": chosen.certificates[0].certified_accuracy,
              "lower_bound_a": chosen.certificates[0].lower_bound}
    curves = {"safe": [], "unconstrained": []}
    for name, domain in (("safe", chosen.domain), ("unconstrained", None)):
        params = head
        for epoch in range(config.epochs):
            params = safe.projected_steps_jit(head_spec, params, domain, fb, ya, config.steps_per_epoch, 1e-3, 64,
                                              jax.random.fold_in(key, 10 + epoch))
            inside = domain is None or domain.contains(params)
            curves[name].append((_accuracy(head_spec, params, fb_test, ya_test),
                                 _accuracy(head_spec, params, fa_test, ya_test), inside))
        record[f"{name}_task_b"] = curves[name][-1][0]
        record[f"{name}_task_a"] = curves[name][-1][1]
        record[f"{name}_certified_a_now"] = certificates.point_certified_accuracy(head_spec, params, cert_x, cert_y)
    record["inside_throughout"] = all(c[2] for c in curves["safe"])
    record["curves"] = curves
    return record


def run(config: Config) -> dict[str, list[dict]]:
    records = []
    for seed in range(config.seeds):
        records.append(one_seed(config, seed))
        r = records[-1]
        print(f"seed {seed}: task B {r['task_b_before']:.3f} -> safe {r['safe_task_b']:.3f} / unconstrained "
              f"{r['unconstrained_task_b']:.3f}; task A safe {r['safe_task_a']:.3f} / unconstrained "
              f"{r['unconstrained_task_a']:.3f}; inside {r['inside_throughout']}", flush=True)
    return {"metrics.csv": records}


def report_of(config: Config, tables: dict[str, list[dict]]) -> report.Report:
    records = tables["metrics.csv"]
    ms = lambda k: f"{np.mean([r[k] for r in records]):.3f} +- {np.std([r[k] for r in records]):.3f}"  # noqa: E731
    quantities = [
        ("tau (task A)", ms("tau")), ("certified accuracy of task A over the LID", ms("certified_a")),
        ("its Clopper-Pearson 95% lower bound (held-out)", ms("lower_bound_a")),
        ("task A test accuracy before fine-tuning", ms("task_a_before")),
        ("task B test accuracy before fine-tuning", ms("task_b_before")),
        ("task B after safe fine-tuning", ms("safe_task_b")),
        ("task B after unconstrained fine-tuning", ms("unconstrained_task_b")),
        ("task A after safe fine-tuning", ms("safe_task_a")),
        ("task A after unconstrained fine-tuning", ms("unconstrained_task_a")),
        ("task A certification-sample accuracy after safe / unconstrained",
         f"{ms('safe_certified_a_now')} / {ms('unconstrained_certified_a_now')}"),
        ("safe head inside its LID after every epoch",
         f"{sum(bool(r['inside_throughout']) for r in records)}/{len(records)}")]
    series = []
    for name, style in (("safe", "-"), ("unconstrained", "--")):
        for task, index in (("B", 0), ("A", 1)):
            values = np.mean([[c[index] for c in r["curves"][name]] for r in records], 0)
            series.append(report.Series(f"task {task}, {name}", list(range(1, len(values) + 1)), values, style))
    panel = report.Panel("fine-tuning on task B", "epoch", "test accuracy", series,
                         hlines=[(float(np.mean([r["tau"] for r in records])), "tau (task A)")])
    return (report.Report("Certified fine-tuning of a frozen CNN's head (digits -> mirrored digits)")
            .paragraph(f"{len(records)} seeds (mean +- std); {config.epochs} epochs of {config.steps_per_epoch} Adam "
                       f"steps on task B; delta {config.delta}, tau_max {config.tau_max}, LID bias weights: "
                       f"{config.bias}. Task A's certificate is on the head's box LID (256 certification samples; "
                       "held-out bound on the digits test split).")
            .table([{"quantity": q, "value": v} for q, v in quantities],
                   [report.column("quantity", "quantity"), report.column("value", "value")])
            .figure("curves.png", [panel]))
