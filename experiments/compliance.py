"""The harness behind the three compliance experiments (minimisation, fairness, pruning).

One editor is trained per requirement on a zoo's training networks; on the held-out networks it is
evaluated across a lambda grid at the requirement's target, and each baseline is run on the same
networks at several strengths. Writes ``metrics.csv`` (one row per method and setting),
``report.md`` and ``pareto.png`` (requirement value against accuracy change) to the output folder.
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metaedit import baselines, datasets, editor, nets, requirements, zoo  # noqa: E402


def _value(requirement, spec, params_or_none, predictions, dataset) -> np.ndarray:
    """[P] the requirement's measure for each edited network (from predictions for fairness)."""
    if requirement.name == "fairness":
        y, s = jnp.asarray(dataset.y_test), jnp.asarray(dataset.s_test)
        return np.asarray([float(requirements.equalised_odds_gap(y, jnp.asarray(p, jnp.float32), s)) for p in predictions])
    count = jax.tree.leaves(params_or_none)[0].shape[0]
    return np.asarray([requirement.measure(spec, jax.tree.map(lambda leaf, i=i: leaf[i], params_or_none), None)
                       for i in range(count)])


def run(name: str, zoo_dir: Path, zoo_setup: tuple, requirement_name: str, target: float,
        baseline_strengths: dict, steps: int, out: Path, lambdas=(0.0, 0.25, 0.5, 0.75, 0.9, 1.0),
        editor_options: dict | None = None) -> list[dict]:
    """Trains (or loads) the zoo and the editor, evaluates everything, writes the report.

    ``editor_options`` overrides :class:`editor.EditorTrainConfig` fields (e.g. ``data_batch``)."""
    out.mkdir(parents=True, exist_ok=True)
    data_name, arch, config = zoo_setup
    dataset = datasets.load_dataset(data_name)
    spec = nets.parse_arch(arch, dataset.input_shape, dataset.num_classes)
    trained = zoo.train_zoo(spec, dataset, config, workdir=zoo_dir, progress=False)
    requirement = requirements.get(requirement_name, dataset.feature_groups)
    started = time.perf_counter()
    trained_editor = editor.train_editor(
        spec, trained.subset("train"), dataset,
        editor.EditorTrainConfig(requirement=requirement_name, steps=steps, chunk_steps=max(1, steps // 10),
                                 **{"safety_margin": editor.default_safety_margin(requirement_name),
                                    **(editor_options or {})}),
        workdir=out / "editor", progress=False)
    train_seconds = time.perf_counter() - started
    held_out = jax.tree.map(jnp.asarray, trained.subset("test"))
    rows = []
    for row in editor.evaluate_editor(trained_editor, spec, requirement, held_out, dataset, lambdas, target):
        rows.append({"method": "editor", "setting": f"lambda={row['lambda']}", "value": row["requirement_value"],
                     "accuracy_change": row["accuracy_change"], "compliance_rate": row["compliance_rate"],
                     "seconds_per_edit": row["seconds_per_edit"]})
    x, y = jnp.asarray(dataset.x_test), jnp.asarray(dataset.y_test)
    accuracy_before = np.asarray(jax.vmap(lambda p: (nets.apply(spec, p, x).argmax(-1) == y).mean())(held_out))
    for method, function in baselines.BASELINES[requirement_name].items():
        for strength in baseline_strengths.get(method, [target]):
            result = function(spec, held_out, dataset, strength)
            values = _value(requirement, spec, result.params, result.predictions, dataset)
            accuracy = (result.predictions == dataset.y_test[None]).mean(1)
            rows.append({"method": method, "setting": f"strength={strength}", "value": float(values.mean()),
                         "accuracy_change": float((accuracy - accuracy_before).mean()),
                         "compliance_rate": float(np.mean([requirement.complies(v, target) for v in values])),
                         "seconds_per_edit": result.seconds_per_edit})
    _write(name, out, rows, requirement, target, train_seconds, len(accuracy_before))
    return rows


def _write(name, out, rows, requirement, target, train_seconds, networks) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(out / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(r["method"] for r in rows):
        sel = [r for r in rows if r["method"] == method]
        ax.plot([r["value"] for r in sel], [100 * r["accuracy_change"] for r in sel], marker="o", label=method)
    ax.axvline(target, color="grey", linestyle=":", label=f"target {target}")
    ax.set_xlabel(requirement.description.split(";")[0])
    ax.set_ylabel("accuracy change (points)")
    ax.set_title(name)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "pareto.png", dpi=120)
    plt.close(fig)
    lines = [f"# {name}", "",
             f"One editor trained for `{requirement.name}` ({train_seconds:.0f} s), evaluated on {networks} held-out "
             f"networks at target {target}, against the baselines on the same networks. Accuracy change is the "
             "mean over networks, in points; compliance is the fraction of networks meeting the target.", "",
             "| method | setting | value | accuracy change | compliant | ms per edit |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['setting']} | {r['value']:.4f} | {100 * r['accuracy_change']:+.2f} | "
                     f"{r['compliance_rate']:.3f} | {1e3 * r['seconds_per_edit']:.2f} |")
    lines += ["", "![pareto](pareto.png)", ""]
    (out / "report.md").write_text("\n".join(lines))


def main(title: str, default_out: str, requirement_name: str, target: float, baseline_strengths: dict,
         zoo_setup: tuple | None = None, editor_options: dict | None = None,
         lambdas=(0.0, 0.25, 0.5, 0.75, 0.9, 1.0), argv=None) -> None:
    """Command line of one experiment: ``--steps`` (editor training) and ``--out``."""
    import argparse

    parser = argparse.ArgumentParser(description=title)
    parser.add_argument("--steps", type=int, default=1500, help="editor training steps")
    parser.add_argument("--out", default=default_out)
    args = parser.parse_args(argv)
    out = Path(args.out)
    setup = zoo_setup or ("adult", "mlp:32,32", zoo.ZooConfig(members=256, epochs=2, seed=0))
    run(title, out / "zoos" / setup[0], setup, requirement_name, target, baseline_strengths, args.steps, out,
        lambdas=lambdas, editor_options=editor_options)
    print(f"wrote {out / 'report.md'}")
