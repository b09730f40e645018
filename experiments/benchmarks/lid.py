"""LID cost: solve time against parameter count and certification samples; bound-propagation throughput.

    python -m experiments.benchmarks.lid [--steps 100] [--repeats 2]

Networks are randomly initialised on Adult's 104 inputs (and an 8x8 digits CNN for bounds); the
labels are the network's own predictions, so its point accuracy is 1 and tau = 0.9 is reachable.
JSON lines (keys as in DESIGN.md section 5):

* ``lid_solve`` / ``box`` and ``zonotope``: seconds for ``--steps`` solver steps (jitted, after
  compilation) against ``params`` (MLP widths 8 .. 128,128) and against ``samples`` (128 .. 2048);
* ``bound_propagation`` / ``interval``, ``zonotope-r4`` and the peer ``forward`` (the plain network
  on one parameter vector): samples per second for one network, and for a vmapped population of 64.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from certify import bounds, certificates, domains, solver
from experiments.benchmarks.common import best_seconds, emit, machine
from metaedit import datasets, nets


_solve = jax.jit(solver.solve)


def solve_seconds(spec, params, x, kind, steps, repeats) -> float:
    y = nets.apply(spec, params, x).argmax(1)
    problem = solver.make_problem(spec, params, solver.LIDConfig(domain=kind, steps=steps, snapshot_every=steps))
    constraints = (certificates.Constraint(x, y, 0.9),)
    jax.block_until_ready(_solve(problem, constraints))
    return best_seconds(lambda: jax.block_until_ready(_solve(problem, constraints)), repeats)


def bound_rates(spec, params, x, repeats, population=64) -> dict:
    y = nets.apply(spec, params, x).argmax(1)
    box = domains.box_around(params, 1e-3)
    zonotope = domains.zonotope_around(params, 4, 1e-3, jax.tree.map(lambda p: 1e-3 * jnp.ones((4,) + p.shape), params))
    forward = jax.jit(lambda p: nets.apply(spec, p, x))
    interval = jax.jit(lambda d: bounds.output_bounds(spec, d, x, y))
    rates = {}
    for name, run, arg in (("forward", forward, params), ("interval", interval, box), ("zonotope-r4", interval, zonotope)):
        jax.block_until_ready(run(arg))
        rates[name] = len(y) / best_seconds(lambda: jax.block_until_ready(run(arg)), repeats)
    stack = lambda tree: jax.tree.map(lambda v: jnp.broadcast_to(v, (population,) + v.shape), tree)  # noqa: E731
    for name, run, arg in (("forward", forward, params), ("interval", interval, box), ("zonotope-r4", interval, zonotope)):
        many = jax.jit(jax.vmap(run))
        stacked = stack(arg)
        jax.block_until_ready(many(stacked))
        rates[name + "/population"] = population * len(y) / best_seconds(lambda: jax.block_until_ready(many(stacked)), repeats)
    return rates


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    adult = datasets.load_adult()
    x_all = jnp.asarray(adult.x_test)
    where = machine()

    for hidden in ((8,), (32, 32), (64, 64), (128, 128)):
        spec = nets.MLPSpec((104,), hidden, 2)
        params = nets.init(spec, jax.random.key(0))
        for kind in ("box", "zonotope"):
            seconds = solve_seconds(spec, params, x_all[:512], kind, args.steps, args.repeats)
            emit("lid_solve", kind, seconds, "s", arch=nets.describe(spec), params=nets.num_params(spec),
                 samples=512, steps=args.steps, ms_per_step=1e3 * seconds / args.steps, **where)
    spec = nets.MLPSpec((104,), (32, 32), 2)
    params = nets.init(spec, jax.random.key(0))
    for samples in (128, 512, 2048):
        for kind in ("box", "zonotope"):
            seconds = solve_seconds(spec, params, x_all[:samples], kind, args.steps, args.repeats)
            emit("lid_solve", kind, seconds, "s", arch=nets.describe(spec), params=nets.num_params(spec),
                 samples=samples, steps=args.steps, ms_per_step=1e3 * seconds / args.steps, **where)

    digits = datasets.load_digits()
    for spec, x in ((nets.MLPSpec((104,), (32, 32), 2), x_all[:1024]),
                    (nets.CNNSpec((8, 8, 1), (8, 16), 10), jnp.asarray(digits.x_test[:512]))):
        params = nets.init(spec, jax.random.key(0))
        for name, rate in bound_rates(spec, params, x, args.repeats).items():
            impl, _, scope = name.partition("/")
            emit("bound_propagation", impl, rate, "samples/s", arch=nets.describe(spec), params=nets.num_params(spec),
                 batch=int(x.shape[0]), networks=64 if scope else 1, **where)


if __name__ == "__main__":
    main()
