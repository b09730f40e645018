"""Experiment: safe continual learning inside certified LIDs against the usual heuristics.

    python experiments/continual.py [--dataset mnist5k] [--scenario domain] [--seeds 5] [--out results/continual]

Every method trains the same MLP through the 5 class-pair tasks of the split data set. The safe
variants (``certify.safe``) train each task inside a box LID certifying every earlier task; the
baselines (``certify.baselines_cl``: naive, L2, EWC, SI, A-GEM, replay with two buffer sizes) run
vmapped over the seeds. Writes ``results/<out>/report.md``, ``metrics.csv`` (one row per method and
seed), ``certificates.csv`` (every old task's certificate after every task, per seed) and
``accuracy.png`` (final accuracy per task).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from certify import baselines_cl, continual, safe  # noqa: E402
from metaedit import datasets, nets  # noqa: E402

BASELINES = {  # name: (method, options); strengths tuned on domain-incremental Split MNIST-5k
    "naive": ("naive", {}),
    "l2": ("l2", {"strength": 1.0}),
    "ewc": ("ewc", {"strength": 1e4}),
    "si": ("si", {"strength": 10.0}),
    "a-gem": ("agem", {"memory_per_task": 50}),
    "replay-10": ("replay", {"memory_per_task": 10}),
    "replay-50": ("replay", {"memory_per_task": 50}),
}
SAFE = {  # name: SafeConfig overrides
    "lid": {},
    "lid-fisher": {"bias": "fisher"},
    "lid-update": {"bias": "update"},
    "lid-lookahead": {"bias": "lookahead"},
    "lid-update-closest": {"bias": "update", "strategy": "closest"},
    "lid-update-largest-closest": {"bias": "update", "strategy": "largest-closest"},
    "lid-update-best-loss": {"bias": "update", "strategy": "best-loss"},
}
MEMORY = {"a-gem", "replay-10", "replay-50"}


def rerender(out: Path, args) -> None:
    """Rewrites the report and plot from a finished run's ``metrics.csv`` (e.g. after a report change)."""
    import json

    with open(out / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key, value in list(row.items()):
            if value == "":
                del row[key]
            elif key == "matrix":
                row[key] = json.loads(value)
            elif key in ("inside", "holds"):
                row[key] = value == "True"
            elif key != "method":
                row[key] = float(value)
        row.update(_row(row["method"], row["seed"], row["matrix"], row["seconds"]) | {
            k: v for k, v in row.items() if k in ("inside", "holds", "min_certified_minus_tau", "final_min_lower_bound",
                                                  "meta_loss_first", "meta_loss_last")})
    sequence = continual.split(datasets.load_dataset(args.dataset), args.scenario)
    spec = nets.MLPSpec(sequence.input_shape, (args.hidden,), sequence.num_outputs)
    _write(out, rows, [], sequence, spec, args)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist5k", choices=["mnist5k", "digits", "mnist1d"])
    parser.add_argument("--scenario", default="domain", choices=["domain", "class"])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=100)
    parser.add_argument("--steps", type=int, default=300, help="training steps per task")
    parser.add_argument("--delta", type=float, default=0.2)
    parser.add_argument("--tau-max", type=float, default=0.9)
    parser.add_argument("--only", help="comma-separated subset of methods")
    parser.add_argument("--out", default=None)
    parser.add_argument("--rerender", action="store_true", help="only rewrite the report from metrics.csv")
    args = parser.parse_args(argv)
    out = Path(args.out or f"results/continual_{args.dataset}_{args.scenario}")
    out.mkdir(parents=True, exist_ok=True)
    if args.rerender:
        rerender(out, args)
        return
    sequence = continual.split(datasets.load_dataset(args.dataset), args.scenario)
    spec = nets.MLPSpec(sequence.input_shape, (args.hidden,), sequence.num_outputs)
    seeds = list(range(args.seeds))
    only = set(args.only.split(",")) if args.only else None
    rows, cert_rows = [], []
    for name, (method, options) in BASELINES.items():
        if only and name not in only:
            continue
        result = baselines_cl.run(method, spec, sequence, seeds, steps_per_task=args.steps, **options)
        for s, matrix in zip(seeds, result.matrix):
            rows.append(_row(name, s, matrix, result.seconds / len(seeds)))
        print(f"{name}: final average {np.mean([r['average'] for r in rows[-len(seeds):]]):.3f}", flush=True)
    for name, overrides in SAFE.items():
        if only and name not in only:
            continue
        for s in seeds:
            config = safe.SafeConfig(steps_per_task=args.steps, delta=args.delta, tau_max=args.tau_max, seed=s, **overrides)
            result = safe.run(spec, sequence, config)
            row = _row(name, s, result.matrix, result.seconds)
            final = [c for c in result.certificates if c.after == sequence.num_tasks - 1]
            row.update(inside=all(result.inside), holds=all(c.holds for c in result.certificates),
                       min_certified_minus_tau=min(c.certified_accuracy - c.tau for c in result.certificates),
                       final_min_lower_bound=min(c.lower_bound for c in final))
            rows.append(row)
            cert_rows += [{"method": name, "seed": s, **c._asdict()} for c in result.certificates]
            if result.meta_history:
                row["meta_loss_first"] = float(np.mean([h[0] for h in result.meta_history]))
                row["meta_loss_last"] = float(np.mean([min(h) for h in result.meta_history]))
        print(f"{name}: final average {np.mean([r['average'] for r in rows[-len(seeds):]]):.3f}", flush=True)
    _write(out, rows, cert_rows, sequence, spec, args)
    print(f"wrote {out / 'report.md'}")


def _row(name, seed, matrix, seconds) -> dict:
    matrix = np.asarray(matrix)
    return {"method": name, "seed": seed, "average": float(continual.average_accuracy(matrix)),
            "forgetting": float(continual.forgetting(matrix)), "seconds": float(seconds),
            "new_task": float(np.mean(np.diag(matrix)[1:])),
            **{f"final_task{j}": float(matrix[-1, j]) for j in range(matrix.shape[1])},
            "matrix": np.round(matrix, 4).tolist()}


def _write(out: Path, rows, cert_rows, sequence, spec, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    if cert_rows:
        with open(out / "certificates.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(cert_rows[0]))
            writer.writeheader()
            writer.writerows(cert_rows)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    stat = lambda m, k: (np.mean([r[k] for r in rows if r["method"] == m]), np.std([r[k] for r in rows if r["method"] == m]))  # noqa: E731
    lines = [f"# Continual learning on Split {args.dataset} ({args.scenario}-incremental)", "",
             f"MLP {nets.describe(spec)}, {sequence.num_tasks} tasks of class pairs, {args.steps} steps per task, "
             f"{args.seeds} seeds (mean +- std). Safe variants: tau_t = min(max(acc_t - {args.delta}, acc_t / 2), "
             f"{args.tau_max}) on 256 certification samples per task; certificates are checked after every task "
             "(certified accuracy on the certification samples >= tau, and the trained parameters inside the LID).", "",
             "| method | final average accuracy | forgetting | new-task accuracy | certified (every old task >= tau, "
             "params inside) | min held-out CP bound after the last task | seconds per seed |",
             "|---|---|---|---|---|---|---|"]
    for m in methods:
        avg, avg_sd = stat(m, "average")
        fg, fg_sd = stat(m, "forgetting")
        sel = [r for r in rows if r["method"] == m]
        certified = f"{sum(bool(r['holds'] and r['inside']) for r in sel)}/{len(sel)}" if "holds" in sel[0] else "no certificate"
        bound = f"{np.mean([r['final_min_lower_bound'] for r in sel]):.3f}" if "holds" in sel[0] else "-"
        tag = " (memory)" if m in MEMORY else ""
        new, new_sd = stat(m, "new_task")
        lines.append(f"| {m}{tag} | {avg:.3f} +- {avg_sd:.3f} | {fg:.3f} +- {fg_sd:.3f} | {new:.3f} +- {new_sd:.3f} | "
                     f"{certified} | {bound} | {stat(m, 'seconds')[0]:.1f} |")
    meta = [r for r in rows if "meta_loss_first" in r]
    if meta:
        lines += ["", f"Lookahead bias learning: buffer loss after the projected lookahead steps went from "
                  f"{np.mean([r['meta_loss_first'] for r in meta]):.4f} (update-direction start) to "
                  f"{np.mean([r['meta_loss_last'] for r in meta]):.4f} (the best learnt bias), mean over seeds and "
                  "task boundaries."]
    lines += ["", "New-task accuracy: test accuracy on task t right after training it, mean over t >= 1. "
              "Forgetting: mean over old tasks of the best earlier accuracy minus the final one. "
              "Seconds per seed include compilation for the safe variants (each seed is its own run) and "
              "exclude it for the vmapped baselines.", "",
              "Accuracy matrices (first seed): row i = after task i.", ""]
    for m in methods:
        first = next(r for r in rows if r["method"] == m)
        lines.append(f"- {m}: {first['matrix']}")
    lines += ["", "![accuracy](accuracy.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
    fig, ax = plt.subplots(figsize=(7, 4))
    for m in methods:
        ax.plot(range(sequence.num_tasks), [stat(m, f"final_task{j}")[0] for j in range(sequence.num_tasks)],
                marker="o", label=m)
    ax.set_xlabel("task")
    ax.set_ylabel("final test accuracy")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
