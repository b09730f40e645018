"""Experiment: certified fine-tuning of a frozen feature extractor's head on a shifted task.

    python experiments/finetune.py [--seeds 5] [--out results/finetune]

Per seed: a digits CNN (cnn:16,16) is pretrained on the original task A and frozen; an MLP head
(16 -> 32 -> 10) is trained on its pooled features. The head gets a box LID certifying task A
(tau = min(max(acc - delta, acc / 2), tau_max) on 256 certification samples) and is then fine-tuned
on task B, the same digits mirrored left to right, by projected Adam; the unconstrained fine-tuning
of the same head is the comparison. After every epoch the run checks that the head lies inside the
LID, so task A's certificate (and its held-out Clopper-Pearson bound) holds throughout.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from certify import domains, lid, project, safe, specs  # noqa: E402
from metaedit import datasets, nets, requirements  # noqa: E402


def _accuracy(spec, params, x, y) -> float:
    return float(requirements.accuracy(spec, params, x, y))


def one_seed(seed: int, epochs: int, steps_per_epoch: int, delta: float, tau_max: float, bias: str) -> dict:
    data = datasets.load_dataset("digits")
    cnn = nets.CNNSpec(data.input_shape, (16, 16), data.num_classes)
    key = jax.random.key(seed)
    xa, ya = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    xa_test, ya_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
    xb, xb_test = xa[:, :, ::-1], xa_test[:, :, ::-1]  # task B: mirrored digits
    extractor = safe.projected_steps_jit(cnn, nets.init(cnn, jax.random.fold_in(key, 0)), None, xa, ya, 1500, 3e-3, 64,
                                    jax.random.fold_in(key, 1))
    feat = jax.jit(lambda x: nets.features(cnn, extractor, x))
    fa, fa_test, fb, fb_test = feat(xa), feat(xa_test), feat(xb), feat(xb_test)
    head_spec = nets.MLPSpec((fa.shape[1],), (32,), data.num_classes)
    head = safe.projected_steps_jit(head_spec, nets.init(head_spec, jax.random.fold_in(key, 2)), None, fa, ya, 1500, 3e-3,
                               64, jax.random.fold_in(key, 3))
    rng = np.random.default_rng(seed)
    rows = rng.permutation(len(ya))[:256]
    cert_x, cert_y = fa[rows], ya[rows]
    point = float(specs.certified_accuracy(head_spec, domains.box_around(head), cert_x, cert_y))
    constraint = specs.Constraint(cert_x, cert_y, safe.tau_rule(point, delta, tau_max))
    weights = None
    if bias == "update":  # room along task B's gradient, from a 64-sample lookahead buffer of task B
        buffer = rng.permutation(len(ya))[:64]
        weights = safe.update_bias(head_spec, head, fb[buffer], ya[buffer])
    lids, _ = lid.compute(head_spec, head, [constraint], [(fa_test, ya_test)], lid.LIDConfig(steps=300, snapshot_every=50),
                          bias=weights)
    chosen = lid.best(lids)
    box = chosen.domain
    record = {"seed": seed, "tau": constraint.tau, "task_a_before": _accuracy(head_spec, head, fa_test, ya_test),
              "task_b_before": _accuracy(head_spec, head, fb_test, ya_test),
              "certified_a": chosen.certificates[0].certified_accuracy,
              "lower_bound_a": chosen.certificates[0].lower_bound}
    curves = {"safe": [], "unconstrained": []}
    for name, domain in (("safe", box), ("unconstrained", None)):
        params = head
        for epoch in range(epochs):
            params = safe.projected_steps_jit(head_spec, params, domain, fb, ya, steps_per_epoch, 1e-3, 64,
                                         jax.random.fold_in(key, 10 + epoch))
            inside = domain is None or project.contains(domain, params)
            curves[name].append((_accuracy(head_spec, params, fb_test, ya_test),
                                 _accuracy(head_spec, params, fa_test, ya_test), inside))
        record[f"{name}_task_b"] = curves[name][-1][0]
        record[f"{name}_task_a"] = curves[name][-1][1]
        record[f"{name}_certified_a_now"] = float(specs.certified_accuracy(
            head_spec, domains.box_around(params), cert_x, cert_y))
    record["inside_throughout"] = all(c[2] for c in curves["safe"])
    record["curves"] = curves
    return record


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps-per-epoch", type=int, default=100)
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--tau-max", type=float, default=0.9)
    parser.add_argument("--bias", default="update", choices=["none", "update"],
                        help="LID bias weights: none, or room along task B's gradient on a lookahead buffer")
    parser.add_argument("--out", default="results/finetune")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for seed in range(args.seeds):
        records.append(one_seed(seed, args.epochs, args.steps_per_epoch, args.delta, args.tau_max, args.bias))
        r = records[-1]
        print(f"seed {seed}: task B {r['task_b_before']:.3f} -> safe {r['safe_task_b']:.3f} / unconstrained "
              f"{r['unconstrained_task_b']:.3f}; task A safe {r['safe_task_a']:.3f} / unconstrained "
              f"{r['unconstrained_task_a']:.3f}; inside {r['inside_throughout']}", flush=True)
    _write(out, records, args)
    print(f"wrote {out / 'report.md'}")


def _write(out: Path, records, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    flat = [{k: v for k, v in r.items() if k != "curves"} for r in records]
    with open(out / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(flat[0]))
        writer.writeheader()
        writer.writerows(flat)
    ms = lambda k: f"{np.mean([r[k] for r in flat]):.3f} +- {np.std([r[k] for r in flat]):.3f}"  # noqa: E731
    lines = ["# Certified fine-tuning of a frozen CNN's head (digits -> mirrored digits)", "",
             f"{len(flat)} seeds (mean +- std); {args.epochs} epochs of {args.steps_per_epoch} Adam steps on task B; "
             f"delta {args.delta}, tau_max {args.tau_max}, LID bias weights: {args.bias}. Task A's certificate is on the "
             "head's box LID "
             "(256 certification samples; held-out bound on the digits test split).", "",
             "| quantity | value |", "|---|---|",
             f"| tau (task A) | {ms('tau')} |",
             f"| certified accuracy of task A over the LID | {ms('certified_a')} |",
             f"| its Clopper-Pearson 95% lower bound (held-out) | {ms('lower_bound_a')} |",
             f"| task A test accuracy before fine-tuning | {ms('task_a_before')} |",
             f"| task B test accuracy before fine-tuning | {ms('task_b_before')} |",
             f"| task B after safe fine-tuning | {ms('safe_task_b')} |",
             f"| task B after unconstrained fine-tuning | {ms('unconstrained_task_b')} |",
             f"| task A after safe fine-tuning | {ms('safe_task_a')} |",
             f"| task A after unconstrained fine-tuning | {ms('unconstrained_task_a')} |",
             f"| task A certification-sample accuracy after safe / unconstrained | {ms('safe_certified_a_now')} / "
             f"{ms('unconstrained_certified_a_now')} |",
             f"| safe head inside its LID after every epoch | {sum(r['inside_throughout'] for r in flat)}/{len(flat)} |",
             "", "![curves](curves.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, style in (("safe", "-"), ("unconstrained", "--")):
        b = np.mean([[c[0] for c in r["curves"][name]] for r in records], 0)
        a = np.mean([[c[1] for c in r["curves"][name]] for r in records], 0)
        ax.plot(range(1, len(b) + 1), b, style, color="C0", label=f"task B, {name}")
        ax.plot(range(1, len(a) + 1), a, style, color="C1", label=f"task A, {name}")
    ax.axhline(np.mean([r["tau"] for r in flat]), color="grey", linestyle=":", label="tau (task A)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
