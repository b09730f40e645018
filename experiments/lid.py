"""Experiment family: certified LIDs for an Adult MLP and a digits CNN, interval against zonotope against
linear-relaxation bounds, with the distribution guarantee (held-out lower bound >= tau).

Trains one small zoo per data set (seeded; a few members), takes member 0, and for each tau computes
the guaranteed LID three ways: a box with interval bounds, a zonotope (affine arithmetic, solved from
that box), and a box with the linear relaxation. Every LID is audited on its held-out rows: parameter
vectors sampled in it (uniform and vertices) and a per-sample attack must not misclassify a certified
sample. Times are warm (each configuration is solved once to compile, then timed). Table:
``metrics.csv``; figures: ``lid_size.png`` and ``lid_time.png``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from certify import audit, certificates, lid
from certify.solver import LIDConfig
from metaedit import datasets, nets, report, zoo
from metaedit.options import option
from metaedit.zoo import ZooConfig

TABLES = ("metrics.csv",)

NETWORKS = (
    ("adult-mlp", "adult", "mlp:32,32", ZooConfig(members=4, epochs=2, seed=0)),
    ("digits-cnn", "digits", "cnn:8,16", ZooConfig(members=4, epochs=30, batch_size=64, seed=0,
                                                   learning_rate=(5e-3, 1e-2))),
)

KINDS = (("box", "interval", "o-"), ("zonotope", "interval", "s-"), ("box", "linear", "^-"))
"""(domain, bound, plot style); a zonotope with interval bounds is the affine-arithmetic ("zonotope") bound."""


def bound_name(domain: str, bound: str) -> str:
    return "zonotope" if domain == "zonotope" and bound == "interval" else bound


@dataclasses.dataclass(frozen=True)
class Config:
    """The LID experiment."""

    networks: tuple = option(NETWORKS, "(name, data set, architecture, zoo) of each network", flag=False)
    deltas: tuple[float, ...] = option((0.04, 0.07, 0.1), "tau = the network's accuracy on the certification "
                                                          "rows minus each")
    rank: int = option(4, "zonotope generators")
    audit_samples: int = option(2000, "parameter vectors sampled in each LID (and as many vertices)")
    attack_rows: int = option(256, "held-out rows attacked per LID")
    out: str = option("results/lid", "output folder")


def audited(spec, domain, x, y, bound, config: Config, seed: int) -> tuple[int, int]:
    """(certified held-out rows that a sampled or attacked network misclassifies, rows attacked)."""
    hits = np.asarray(certificates.certified(spec, domain, x, y, bound=bound))
    found = audit.audit_certified(spec, domain, x, y, hits, config.audit_samples, jax.random.key(seed),
                                  jax.random.key(seed + 1), attack_rows=config.attack_rows)
    return found.violations, found.attacked_rows


def run(config: Config) -> dict[str, list[dict]]:
    rows = []
    for name, data_name, arch, zoo_config in config.networks:
        dataset = datasets.load_dataset(data_name)
        spec = nets.parse_arch(arch, dataset.input_shape, dataset.num_classes)
        trained = zoo.train_zoo(spec, dataset, zoo_config, workdir=Path(config.out) / "zoos" / name, progress=False)
        params = trained.member(0)
        cert, heldout = lid.default_sample_counts(len(dataset.y_test))
        cert_rows, heldout_rows = lid.certification_rows(len(dataset.y_test), cert, heldout, 0)
        top = certificates.point_certified_accuracy(spec, params, dataset.x_test[cert_rows], dataset.y_test[cert_rows])
        hx, hy = jnp.asarray(dataset.x_test[heldout_rows]), jnp.asarray(dataset.y_test[heldout_rows])
        print(f"{name}: {nets.describe(spec)}, {nets.num_params(spec)} parameters, test accuracy "
              f"{trained.metrics['test_accuracy'][0]:.4f}, accuracy on the {cert} certification rows {top:.4f}",
              flush=True)
        for delta in config.deltas:
            tau = round(top - delta, 3)
            for domain, bound, _ in KINDS:
                solver = LIDConfig(domain=domain, bound=bound, rank=config.rank)
                try:
                    lid.for_network(spec, params, dataset, tau, solver)  # compiles
                except lid.LIDError as error:
                    print(f"  tau {tau:.3f} {bound_name(domain, bound):9s} no LID: {error}", flush=True)
                    break
                started = time.perf_counter()
                found = lid.for_network(spec, params, dataset, tau, solver)
                seconds = time.perf_counter() - started
                (certificate,) = found.best.certificates
                broken, attacked = audited(spec, found.best.domain, hx, hy, bound, config, len(rows))
                rows.append({
                    "network": name, "params": nets.num_params(spec), "tau": tau, "domain": domain,
                    "bound": bound_name(domain, bound), "mean_log_width": float(found.best.domain.mean_log_width()),
                    "certified_accuracy": certificate.certified_accuracy,
                    "heldout_certified_accuracy": certificate.heldout_certified_accuracy,
                    "clopper_pearson_95": certificate.lower_bound, "holds": certificate.holds,
                    "scale": found.scale_test.scale, "solve_target": found.target, "frozen": found.frozen,
                    "solve_seconds": seconds if found.start_seconds is None else seconds - found.start_seconds,
                    "cert_samples": cert, "heldout_samples": heldout, "audit_violations": broken,
                    "attacked_rows": attacked,
                })
                print(f"  tau {tau:.3f} {rows[-1]['bound']:9s} mean log-width {rows[-1]['mean_log_width']:7.3f}  "
                      f"certified {certificate.certified_accuracy:.4f}  held-out "
                      f"{certificate.heldout_certified_accuracy:.4f} (CP {certificate.lower_bound:.4f}, holds "
                      f"{certificate.holds})  scale {found.scale_test.scale:.3f}  {rows[-1]['solve_seconds']:.1f} s  "
                      f"audit: {broken} violations", flush=True)
    return {"metrics.csv": rows}


def report_of(config: Config, tables: dict[str, list[dict]]) -> report.Report:
    rows = tables["metrics.csv"]
    networks = sorted({r["network"] for r in rows})
    names = [bound_name(d, b) for d, b, _ in KINDS]

    def panels(metric: str, ylabel: str) -> list[report.Panel]:
        return [report.Panel(network, "tau (held-out lower bound guaranteed)", ylabel, [
            report.Series(kind, [r["tau"] for r in rows if r["network"] == network and r["bound"] == kind],
                          [r[metric] for r in rows if r["network"] == network and r["bound"] == kind], style)
            for kind, (_, _, style) in zip(names, KINDS)]) for network in networks]

    columns = [report.column("network", "network"), report.column("params", "params"),
               report.column("tau", "tau", "{:.3f}"), report.column("bound", "bound"),
               report.column("mean log-width", "mean_log_width", "{:.3f}"),
               report.column("certified", "certified_accuracy", "{:.4f}"),
               report.column("held-out", "heldout_certified_accuracy", "{:.4f}"),
               report.column("CP 95%", "clopper_pearson_95", "{:.4f}"), report.column("holds", "holds"),
               report.column("scale", "scale", "{:.3f}"), report.column("time (s)", "solve_seconds", "{:.1f}"),
               report.column("audit violations", "audit_violations")]
    gains = []
    for network in networks:
        for tau in sorted({r["tau"] for r in rows if r["network"] == network}):
            by = {r["bound"]: r for r in rows if r["network"] == network and r["tau"] == tau}
            if "interval" in by:
                base = by["interval"]["mean_log_width"]
                gains.append(f"{network}, tau {tau:.3f}: mean log-width, interval {base:.3f}"
                             + "".join(f", {k} {by[k]['mean_log_width']:.3f} ({by[k]['mean_log_width'] - base:+.3f})"
                                       for k in names[1:] if k in by))
    return (report.Report("Certified LIDs: interval, zonotope and linear-relaxation bounds")
            .paragraph("Produced by `python -m experiments.run --config lid`. Each row: the guaranteed LID of member 0 "
                       "of a small seeded zoo: with 95% confidence its certified accuracy on new data is >= tau (the "
                       "Clopper-Pearson bound `CP 95%` of its held-out rows, which only chose the scale, by "
                       "fixed-sequence testing). Half the test rows (at most 4,096) certify, the rest are held out. "
                       "The zonotope is solved from the box (its time excludes the box's). Mean log-width is over "
                       "the free parameters (unexercised first-layer weights are frozen). Audit: certified held-out "
                       "rows misclassified by any of the sampled parameter vectors (uniform and vertices) or by a "
                       "per-sample attack (projected gradient descent on the margin inside the LID); it must be 0.")
            .table(rows, columns).heading("Size at equal guarantee").bullets(gains)
            .figure("lid_size.png", panels("mean_log_width", "mean log-width of the LID"), 5, 3.6)
            .figure("lid_time.png", panels("solve_seconds", "solve + certify time (s)"), 5, 3.6))
