"""Experiment family: certified LIDs for an Adult MLP and a digits CNN over a grid of tau, box against zonotope.

Trains one small zoo per data set (seeded; a few members), takes member 0, and for each tau below
the network's own certified accuracy computes the best certified box LID and the zonotope LID
solved from it. Table: ``metrics.csv`` (one row per network, tau and domain); figures:
``lid_size.png`` and ``lid_time.png``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from certify import certificates, lid
from certify.solver import LIDConfig
from metaedit import datasets, nets, report, zoo
from metaedit.options import option
from metaedit.zoo import ZooConfig

TABLES = ("metrics.csv",)

NETWORKS = (
    ("adult-mlp", "adult", "mlp:32,32", ZooConfig(members=4, epochs=2, seed=0), 512, 2000),
    ("digits-cnn", "digits", "cnn:8,16", ZooConfig(members=4, epochs=30, batch_size=64, seed=0,
                                                   learning_rate=(5e-3, 1e-2)), 200, 340),
)


@dataclasses.dataclass(frozen=True)
class Config:
    """The LID experiment."""

    networks: tuple = option(NETWORKS, "(name, data set, architecture, zoo, certification samples, held-out "
                                       "samples) of each network", flag=False)
    deltas: tuple[float, ...] = option((0.01, 0.03, 0.06), "tau = the network's point-certified accuracy minus each")
    steps: int = option(300, "solver steps")
    rank: int = option(4, "zonotope generators")
    out: str = option("results/lid", "output folder")


def run(config: Config) -> dict[str, list[dict]]:
    rows = []
    for name, data_name, arch, zoo_config, cert_samples, heldout in config.networks:
        dataset = datasets.load_dataset(data_name)
        spec = nets.parse_arch(arch, dataset.input_shape, dataset.num_classes)
        trained = zoo.train_zoo(spec, dataset, zoo_config, workdir=Path(config.out) / "zoos" / name, progress=False)
        params = trained.member(0)
        cert_rows, _ = lid.certification_rows(len(dataset.y_test), cert_samples, heldout, 0)
        top = certificates.point_certified_accuracy(spec, params, dataset.x_test[cert_rows], dataset.y_test[cert_rows])
        print(f"{name}: {nets.describe(spec)}, {nets.num_params(spec)} parameters, test accuracy "
              f"{trained.metrics['test_accuracy'][0]:.4f}, point-certified {top:.4f}", flush=True)
        for delta in config.deltas:
            tau = round(top - delta, 4)
            found = lid.for_network(spec, params, dataset, tau, LIDConfig(domain="zonotope", rank=config.rank,
                                                                          steps=config.steps), cert_samples, heldout)
            box_seconds = found.start_seconds
            for kind, best, count, seconds in (("box", found.start.best, len(found.start.lids), box_seconds),
                                               ("zonotope", found.best, len(found.lids), found.seconds - box_seconds)):
                (certificate,) = best.certificates
                rows.append({
                    "network": name, "params": nets.num_params(spec), "tau": tau, "domain": kind,
                    "log_volume": best.log_volume, "mean_log_width": float(best.domain.mean_log_width()),
                    "certified_accuracy": certificate.certified_accuracy,
                    "heldout_certified_accuracy": certificate.heldout_certified_accuracy,
                    "clopper_pearson_95": certificate.lower_bound, "lids": count, "best_step": best.step,
                    "shrink_scale": best.scale, "solve_seconds": seconds,
                    "cert_samples": cert_samples, "heldout_samples": heldout,
                })
                print(f"  tau {tau:.4f} {kind:8s} mean log-width {rows[-1]['mean_log_width']:7.3f}  certified "
                      f"{certificate.certified_accuracy:.4f}  held-out {certificate.heldout_certified_accuracy:.4f} "
                      f"(CP {certificate.lower_bound:.4f})  {seconds:.1f} s", flush=True)
    return {"metrics.csv": rows}


def report_of(config: Config, tables: dict[str, list[dict]]) -> report.Report:
    rows = tables["metrics.csv"]
    networks = sorted({r["network"] for r in rows})

    def panels(metric: str, ylabel: str) -> list[report.Panel]:
        return [report.Panel(network, "tau (certified accuracy kept)", ylabel, [
            report.Series(kind, [r["tau"] for r in rows if r["network"] == network and r["domain"] == kind],
                          [r[metric] for r in rows if r["network"] == network and r["domain"] == kind], style)
            for kind, style in (("box", "o-"), ("zonotope", "s-"))]) for network in networks]

    columns = [report.column("network", "network"), report.column("params", "params"),
               report.column("tau", "tau", "{:.4f}"), report.column("domain", "domain"),
               report.column("log-volume", "log_volume", "{:.1f}"),
               report.column("mean log-width", "mean_log_width", "{:.3f}"),
               report.column("certified", "certified_accuracy", "{:.4f}"),
               report.column("held-out", "heldout_certified_accuracy", "{:.4f}"),
               report.column("CP 95%", "clopper_pearson_95", "{:.4f}"), report.column("time (s)", "solve_seconds", "{:.1f}")]
    gains = []
    for network in networks:
        for tau in sorted({r["tau"] for r in rows if r["network"] == network}):
            pair = {r["domain"]: r for r in rows if r["network"] == network and r["tau"] == tau}
            gain = pair["zonotope"]["log_volume"] - pair["box"]["log_volume"]
            gains.append(f"{network}, tau {tau:.4f}: zonotope log-volume minus box log-volume = {gain:+.2f} "
                         f"({gain / pair['box']['params']:+.4f} per parameter)")
    return (report.Report("Certified LIDs: box against zonotope")
            .paragraph("Produced by `python -m experiments.run --config lid`. Each row: the best certified LID (largest "
                       "log-volume among the solver's snapshots, each certified by exact bound propagation on the "
                       "certification samples) for member 0 of a small seeded zoo. The zonotope is solved from the box "
                       "LID, so it starts equal to it; its time excludes the box's. `CP 95%` is the one-sided "
                       "Clopper-Pearson lower bound on the certified rate from the held-out samples. Log-volume of a "
                       "zonotope is the lower bound described in `certify/domains/zonotope.py`.")
            .table(rows, columns).heading("Zonotope against box at equal tau").bullets(gains)
            .figure("lid_size.png", panels("mean_log_width", "mean log-width of the LID"), 5, 3.6)
            .figure("lid_time.png", panels("solve_seconds", "solve + certify time (s)"), 5, 3.6))
