"""Experiment: certified LIDs for an Adult MLP and a digits CNN over a grid of tau, box vs zonotope.

    python experiments/lid.py [--out results/lid] [--steps 300] [--quick]

Trains one small zoo per data set (seeded; a few members), takes member 0, and for each tau below
the network's own certified accuracy computes the best certified box LID and the zonotope LID
solved from it. Writes ``metrics.csv`` (one row per network, tau and domain), ``report.md`` and
``lid_size.png`` / ``lid_time.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from certify import domains, lid, pipeline, specs  # noqa: E402
from metaedit import datasets, nets, zoo  # noqa: E402

NETWORKS = {
    "adult-mlp": ("adult", "mlp:32,32", zoo.ZooConfig(members=4, epochs=2, seed=0)),
    "digits-cnn": ("digits", "cnn:8,16", zoo.ZooConfig(members=4, epochs=30, batch_size=64, seed=0,
                                                        learning_rate=(5e-3, 1e-2))),
}


def point_accuracy(spec, params, dataset, rows) -> float:
    """Certified accuracy of the zero-size domain: the network's accuracy with margin > tolerance."""
    x, y = dataset.x_test[rows], dataset.y_test[rows]
    return float(specs.certified_accuracy(spec, domains.box_around(params), x, y))


def run(out: Path, steps: int, quick: bool) -> list[dict]:
    rows = []
    for name, (data_name, arch, config) in NETWORKS.items():
        dataset = datasets.load_dataset(data_name)
        spec = nets.parse_arch(arch, dataset.input_shape, dataset.num_classes)
        trained = zoo.train_zoo(spec, dataset, config, workdir=out / "zoos" / name, progress=False)
        params = trained.member(0)
        cert_samples, heldout = (200, 340) if data_name == "digits" else (512, 2000)
        cert_rows, _ = pipeline.certification_rows(len(dataset.y_test), cert_samples, heldout, 0)
        top = point_accuracy(spec, params, dataset, cert_rows)
        print(f"{name}: {nets.describe(spec)}, {nets.num_params(spec)} parameters, test accuracy "
              f"{trained.metrics['test_accuracy'][0]:.4f}, point-certified {top:.4f}", flush=True)
        deltas = (0.02,) if quick else (0.01, 0.03, 0.06)
        for delta in deltas:
            tau = round(top - delta, 4)
            result = pipeline.lids_for_network(spec, params, dataset, tau, lid.LIDConfig(domain="zonotope", steps=steps),
                                               cert_samples, heldout, seed=0)
            box_result = {"best": result["box"], "lids": result["box_lids"], "seconds": result["box_seconds"]}
            for kind, res in (("box", box_result), ("zonotope", result)):
                best = res["best"]
                (certificate,) = best.certificates
                rows.append({
                    "network": name, "params": nets.num_params(spec), "tau": tau, "domain": kind,
                    "log_volume": best.log_volume,
                    "mean_log_width": float(domains.mean_log_width(best.domain)),
                    "certified_accuracy": certificate.certified_accuracy,
                    "heldout_certified_accuracy": certificate.heldout_certified_accuracy,
                    "clopper_pearson_95": certificate.lower_bound,
                    "lids": len(res["lids"]), "best_step": best.step, "shrink_scale": best.scale,
                    "solve_seconds": res["seconds"],  # the zonotope's includes its box "cert_samples": cert_samples, "heldout_samples": heldout,
                })
                print(f"  tau {tau:.4f} {kind:8s} log-volume {best.log_volume:10.1f}  mean log-width "
                      f"{rows[-1]['mean_log_width']:7.3f}  certified {certificate.certified_accuracy:.4f}  "
                      f"held-out {certificate.heldout_certified_accuracy:.4f} (CP {certificate.lower_bound:.4f})  "
                      f"{res['seconds']:.1f} s", flush=True)
    return rows


def write(out: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(out / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    networks = sorted({r["network"] for r in rows})
    for metric, ylabel, filename in (("mean_log_width", "mean log-width of the LID", "lid_size.png"),
                                     ("solve_seconds", "solve + certify time (s)", "lid_time.png")):
        fig, axes = plt.subplots(1, len(networks), figsize=(5 * len(networks), 3.6), squeeze=False)
        for ax, network in zip(axes[0], networks):
            for kind, marker in (("box", "o"), ("zonotope", "s")):
                sel = [r for r in rows if r["network"] == network and r["domain"] == kind]
                ax.plot([r["tau"] for r in sel], [r[metric] for r in sel], marker=marker, label=kind)
            ax.set_title(network)
            ax.set_xlabel("tau (certified accuracy kept)")
            ax.set_ylabel(ylabel)
            ax.legend()
        fig.tight_layout()
        fig.savefig(out / filename, dpi=120)
        plt.close(fig)
    lines = ["# Certified LIDs: box against zonotope", "",
             "Produced by `python experiments/lid.py`. Each row: the best certified LID (largest "
             "log-volume among the solver's snapshots, each certified by exact bound propagation on the "
             "certification samples) for member 0 of a small seeded zoo. The zonotope is solved from "
             "the box LID, so it starts equal to it, and its time includes the box's. `CP 95%` is the one-sided Clopper-Pearson lower "
             "bound on the certified rate from the held-out samples. Log-volume of a zonotope is the "
             "lower bound described in `certify/domains.py`.", "",
             "| network | params | tau | domain | log-volume | mean log-width | certified | held-out | CP 95% | time (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['network']} | {r['params']} | {r['tau']:.4f} | {r['domain']} | {r['log_volume']:.1f} | "
                     f"{r['mean_log_width']:.3f} | {r['certified_accuracy']:.4f} | "
                     f"{r['heldout_certified_accuracy']:.4f} | {r['clopper_pearson_95']:.4f} | {r['solve_seconds']:.1f} |")
    lines += ["", "## Zonotope against box at equal tau", ""]
    for network in networks:
        for tau in sorted({r["tau"] for r in rows if r["network"] == network}):
            pair = {r["domain"]: r for r in rows if r["network"] == network and r["tau"] == tau}
            gain = pair["zonotope"]["log_volume"] - pair["box"]["log_volume"]
            lines.append(f"- {network}, tau {tau:.4f}: zonotope log-volume minus box log-volume = {gain:+.2f} "
                         f"({gain / pair['box']['params']:+.4f} per parameter)")
    lines += ["", "![size](lid_size.png)", "", "![time](lid_time.png)", ""]
    (out / "report.md").write_text("\n".join(lines))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="results/lid")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="one tau per network")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = run(out, args.steps, args.quick)
    write(out, rows)
    print(f"wrote {out / 'report.md'}")


if __name__ == "__main__":
    main()
