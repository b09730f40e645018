"""Our LID solver against the reference implementation (PyTorch + Cooper + interval bounds), side by side.

    python -m experiments.benchmarks.lid_reference [--samples 512 4096] [--reference-steps 2000] [--rounds 7]

The same Adult MLP (``mlp:32,32``, member 0 of the seeded zoo of ``--config lid``), the same
certification rows (the first ``n`` of our certification split) and the same tau. For each n:

* **speed**: seconds per solver step, warm on both sides (ours: the jitted ``lax.scan`` of
  :func:`certify.solver.solve` divided by its steps, compilation excluded and reported apart; the
  reference: the median step after warm-up), with the same n samples per step (the reference's
  minibatch and certificate batch set to n); then ``--rounds`` interleaved rounds, each one 150-step
  solve of ours (its wall time / 150) and one of the reference (the mean of its steps after
  warm-up) back to back, whose per-round speed-ups give a median and a range under the same slow
  drift of this shared machine's load;
* **size at the same guarantee**, the reference's final box shrunk towards the network until it
  certifies, next to our LID (our defaults, and with the reference's width cap of 10 and 600 steps):
  - ``samples``: certified accuracy on the n certification rows >= tau (bisection on the scale);
  - ``distribution``: the 95% Clopper-Pearson bound on the held-out rows >= tau (the same
    fixed-sequence test of scales as ours, :func:`certify.guarantee.fixed_sequence`).
  Size is the mean log-width over the parameters that the certification rows exercise (both
  sides; parameters they never touch say nothing about the data), and over all parameters.

JSON lines (``benchmark``: ``lid_reference``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from certify import certificates, domains, guarantee, lid, solver
from certify.lid import LIDConfig
from experiments.benchmarks.common import best_seconds, emit, machine
from experiments.benchmarks.reference_lid import solve_reference
from metaedit import datasets, nets, zoo
from metaedit.zoo import ZooConfig


VARIANTS = {"ours": LIDConfig(), "ours-cap10-600": LIDConfig(steps=600, max_log_radius=float(np.log(10.0)))}
"""Our defaults, and our solver with the reference's width cap (10) and 600 steps."""


def mean_log_width(domain, mask) -> tuple[float, float]:
    """(mean log-width over the parameters where mask is 1 and the width is positive, over all positive)."""
    widths = np.concatenate([2 * np.asarray(r).ravel() for r in jax.tree.leaves(domain.radius)])
    used = np.concatenate([np.asarray(m).ravel() for m in jax.tree.leaves(mask)]) > 0
    positive = widths > 0
    return float(np.log(widths[positive & used]).mean()), float(np.log(widths[positive]).mean())


def shrink_until_certified(spec, box, params, x, y, tau, steps: int = 30):
    """The largest ``params + s (box - params)``, s in [0, 1], whose certified accuracy on (x, y) is >= tau."""
    def holds(scale):
        return float(certificates.certified_accuracy(spec, box.scaled(params, scale), x, y)) >= tau
    if holds(1.0):
        return box, 1.0
    low, high = 0.0, 1.0
    for _ in range(steps):
        middle = (low + high) / 2
        low, high = (middle, high) if holds(middle) else (low, middle)
    return box.scaled(params, low), low


def our_solver(spec, params, x, y, tau, steps: int = 150):
    """(compile seconds, ``seconds_per_step(repeats=1)``: the best of ``repeats`` warm solves' wall time
    over their steps) for the default box solver, compiled once."""
    problem = solver.make_problem(spec, params, LIDConfig(steps=steps))
    constraints = (certificates.Constraint(x, y, tau),)
    solve = jax.jit(solver.solve)

    def run():
        jax.block_until_ready(solve(problem, constraints))

    return best_seconds(run, 1), lambda repeats=1: best_seconds(run, repeats) / steps


def interleaved_speedups(ours, reference, rounds: int) -> np.ndarray:
    """[rounds] the reference's seconds per step over ours, each round timing ours then the reference
    back to back, so that slow drift in the machine's load weighs on both sides (a short burst is
    likelier to land on the longer of the two)."""
    ratios = []
    for _ in range(rounds):
        mine = ours()
        ratios.append(reference() / mine)
    return np.array(ratios)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[512, 4096])
    parser.add_argument("--tau", type=float, default=0.8)
    parser.add_argument("--reference-steps", type=int, default=2000, help="the reference's default n_iters")
    parser.add_argument("--rounds", type=int, default=7,
                        help="interleaved rounds of one 150-step solve each (mean seconds per step on both sides), for "
                             "the speed-up's median and range (0: none)")
    parser.add_argument("--work", default="results/lid/zoos/adult-mlp")
    args = parser.parse_args(argv)
    if args.rounds < 0:
        parser.error(f"--rounds must be >= 0, got {args.rounds}")
    print(f"# {machine()}", flush=True)
    dataset = datasets.load_dataset("adult")
    spec = nets.parse_arch("mlp:32,32", dataset.input_shape, dataset.num_classes)
    trained = zoo.train_zoo(spec, dataset, ZooConfig(members=4, epochs=2, seed=0), workdir=Path(args.work),
                            progress=False)
    params = jax.tree.map(jnp.asarray, trained.member(0))
    numpy_params = jax.tree.map(np.asarray, trained.member(0))
    n_cert, n_heldout = lid.default_sample_counts(len(dataset.y_test))
    cert_rows, heldout_rows = lid.certification_rows(len(dataset.y_test), n_cert, n_heldout, 0)
    hx, hy = jnp.asarray(dataset.x_test[heldout_rows]), jnp.asarray(dataset.y_test[heldout_rows])
    for n in args.samples:
        rows = cert_rows[:n]
        x, y = jnp.asarray(dataset.x_test[rows]), jnp.asarray(dataset.y_test[rows])
        mask, frozen = guarantee.unexercised_mask(spec, params, x)
        sizes = {"samples": n, "tau": args.tau, "heldout": len(heldout_rows)}
        compile_seconds, our_step = our_solver(spec, params, x, y, args.tau)
        ours = our_step(5)
        emit("lid_reference", "ours/seconds_per_step", ours, "s", **sizes, compile_seconds=compile_seconds)
        host_x, host_y = np.asarray(x), np.asarray(y)
        reference = solve_reference(numpy_params, host_x, host_y, args.tau, args.reference_steps,
                                    batch_size=n, certificate_samples=n)
        emit("lid_reference", "reference/seconds_per_step", reference.seconds_per_step, "s", **sizes,
             steps=reference.steps, final_box_certified_accuracy=reference.certified_accuracy,
             mean_seconds_per_step=reference.mean_seconds_per_step)
        emit("lid_reference", "speedup_per_step", reference.seconds_per_step / ours, "x", **sizes)
        if args.rounds:
            ratios = interleaved_speedups(our_step, lambda: solve_reference(
                numpy_params, host_x, host_y, args.tau, 150, batch_size=n, certificate_samples=n).mean_seconds_per_step,
                args.rounds)
            emit("lid_reference", "speedup_per_step/interleaved_median", float(np.median(ratios)), "x", **sizes,
                 rounds=args.rounds, least=float(ratios.min()), most=float(ratios.max()),
                 rounds_at_least_10x=int((ratios >= 10).sum()))
        reference_box = domains.Box(jax.tree.map(jnp.asarray, reference.lo), jax.tree.map(jnp.asarray, reference.hi))

        # the sample-level guarantee
        shrunk, scale = shrink_until_certified(spec, reference_box, params, x, y, args.tau)
        used, everything = mean_log_width(shrunk, mask)
        emit("lid_reference", "reference/samples", used, "mean log-width", **sizes, all_parameters=everything,
             shrink_scale=scale, frozen_in_ours=frozen)
        for name, config in VARIANTS.items():
            found = lid.for_network(spec, params, dataset, args.tau, config, guarantee_kind="samples",
                                    rows=(rows, heldout_rows))
            used, everything = mean_log_width(found.best.domain, mask)
            emit("lid_reference", f"{name}/samples", used, "mean log-width", **sizes, all_parameters=everything)

        # the distribution guarantee: both boxes through the same held-out scale test
        test = guarantee.fixed_sequence(spec, reference_box, params, hx, hy, args.tau, 0.95, "interval", None)
        if test.scale is None:
            emit("lid_reference", "reference/distribution", float("nan"), "mean log-width", **sizes,
                 note="no scale of the reference box reaches the held-out bound")
        else:
            used, everything = mean_log_width(reference_box.scaled(params, test.scale), mask)
            emit("lid_reference", "reference/distribution", used, "mean log-width", **sizes,
                 all_parameters=everything, scale=test.scale, lower_bound=test.lower_bound)
        for name, config in VARIANTS.items():
            found = lid.for_network(spec, params, dataset, args.tau, config, rows=(rows, heldout_rows))
            used, everything = mean_log_width(found.best.domain, mask)
            emit("lid_reference", f"{name}/distribution", used, "mean log-width", **sizes,
                 all_parameters=everything, lower_bound=found.best.certificates[0].lower_bound,
                 scale=found.scale_test.scale)


if __name__ == "__main__":
    main()
