"""Population training throughput: the vmapped zoo against its peers, side by side in one run.

    python -m experiments.benchmarks.population [--members 256] [--steps 50] [--impl all]

Every implementation trains the same population of ReLU MLPs (Adult inputs, hidden 32,32, 2
classes) with AdamW at per-member learning rates and weight decays, on per-member random batches of
the same size, for the same number of steps:

* ``jax-vmap``: ``metaedit.zoo.train_chunk`` under ``jit(vmap(...))``, as ``metaedit zoo`` runs it
  (on a CPU: one XLA device per core, the population sharded over them);
* ``jax-loop``: the same jitted per-member function, called for one member at a time;
* ``torch-vmap``: the ``torch.func`` ensemble recipe (``stack_module_state`` + ``functional_call``
  under ``torch.vmap``), AdamW written on the stacked tensors;
* ``torch-loop``: one ``nn.Module`` and ``torch.optim.AdamW`` per member, trained in turn.

Prints one JSON line per measurement: ``network_steps/s`` (members x steps / second, after
compilation/warm-up), achieved GFLOP/s (6 * batch * weights per member-step) and the machine's
dense float32 matmul GFLOP/s in each framework, then the speed-ups of ``jax-vmap``.
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.benchmarks.common import (best_seconds, emit, jax_matmul_gflops, machine,
                                           torch_matmul_gflops)
from metaedit import datasets, nets, zoo
from metaedit.training import Batch
from metaedit.sharding import Placement, pad_population, use_cpu_cores

IMPLS = ("jax-vmap", "jax-loop", "torch-vmap", "torch-loop")


def population(members: int, n_train: int, steps: int, seed: int = 0) -> zoo.Hparams:
    config = zoo.ZooConfig(members=members, seed=seed, steps_fraction=(1.0, 1.0))
    hparams = zoo.sample_hparams(config, n_train)
    return hparams._replace(num_steps=np.full(members, steps, np.int32))


def run_jax_vmap(spec, hparams, data, steps, batch_size, repeats):
    """The zoo's own jitted program, population sharded over every visible device."""
    members = len(hparams.learning_rate)
    placement = Placement()
    config = zoo.ZooConfig(members=members, batch_size=batch_size, chunk_steps=steps)
    program = zoo.ZooProgram(spec, config, placement)
    padded = placement.padded_size(members)
    hp = placement.put_population(pad_population(hparams, padded))
    data = placement.put_replicated(data)
    indices = placement.put_population(np.arange(padded))
    jax.block_until_ready(program.chunk(program.init(indices, hp), hp, data))  # compile

    def run():  # the chunk donates its input state, so each run starts from a fresh init
        state = jax.block_until_ready(program.init(indices, hp))
        start = time.perf_counter()
        jax.block_until_ready(program.chunk(state, hp, data))
        return time.perf_counter() - start

    return min(run() for _ in range(repeats))


def run_jax_loop(spec, hparams, data, steps, batch_size, repeats):
    members = len(hparams.learning_rate)
    chunk = jax.jit(functools.partial(zoo.train_chunk, spec, batch_size, steps))
    init = jax.jit(lambda i, hp: zoo.init_member(spec, zoo.member_key(0, i), hp))
    member_hps = [jax.tree.map(jnp.asarray, hparams.member(i)) for i in range(members)]
    states = [init(i, hp) for i, hp in enumerate(member_hps)]
    jax.block_until_ready(chunk(states[0], member_hps[0], data))  # compile

    def run():
        for state, hp in zip(states, member_hps):
            out = chunk(state, hp, data)
        jax.block_until_ready(out)

    return best_seconds(run, repeats)


def _torch_mlp(widths):
    import torch

    layers = []
    for i in range(len(widths) - 1):
        layers.append(torch.nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def _torch_batches(hparams, n, steps, batch_size, seed=0):
    """Per-member row indices [steps, P, B], each member drawing from its own subsample window."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    sizes = torch.as_tensor(np.asarray(hparams.subsample_size), dtype=torch.float64)
    offsets = torch.as_tensor(np.asarray(hparams.data_offset), dtype=torch.int64)
    members = len(sizes)
    draws = torch.rand(steps, members, batch_size, generator=generator, dtype=torch.float64)
    return ((draws * sizes[None, :, None]).long() + offsets[None, :, None]) % n


def run_torch_vmap(widths, hparams, x, y, steps, batch_size, repeats):
    import copy

    import torch
    from torch.func import functional_call, grad_and_value, stack_module_state, vmap

    members = len(hparams.learning_rate)
    models = [_torch_mlp(widths) for _ in range(members)]
    base = copy.deepcopy(models[0]).to("meta")
    params0, buffers = stack_module_state(models)
    rows = _torch_batches(hparams, len(y), steps, batch_size)

    def loss_fn(params, buffers, xb, yb):
        return torch.nn.functional.cross_entropy(functional_call(base, (params, buffers), (xb,)), yb)

    grads_fn = vmap(grad_and_value(loss_fn))

    def column(values, like):
        return torch.as_tensor(np.asarray(values), dtype=like.dtype).reshape((-1,) + (1,) * (like.dim() - 1))

    lrs = {k: column(hparams.learning_rate, v) for k, v in params0.items()}
    wds = {k: column(hparams.weight_decay, v) for k, v in params0.items()}
    b1, b2, eps = 0.9, 0.999, 1e-8

    def train():
        params = {k: v.detach().clone() for k, v in params0.items()}
        mu = {k: torch.zeros_like(v) for k, v in params.items()}
        nu = {k: torch.zeros_like(v) for k, v in params.items()}
        with torch.no_grad():
            for t in range(1, steps + 1):
                grads, _ = grads_fn(params, buffers, x[rows[t - 1]], y[rows[t - 1]])
                for k, p in params.items():
                    g = grads[k]
                    mu[k].mul_(b1).add_(g, alpha=1 - b1)
                    nu[k].mul_(b2).addcmul_(g, g, value=1 - b2)
                    update = (mu[k] / (1 - b1**t)) / ((nu[k] / (1 - b2**t)).sqrt() + eps)
                    p.sub_(lrs[k] * (update + wds[k] * p))
        return params

    train()  # warm-up
    return best_seconds(train, repeats)


def run_torch_loop(widths, hparams, x, y, steps, batch_size, repeats):
    import torch

    members = len(hparams.learning_rate)
    models = [_torch_mlp(widths) for _ in range(members)]
    rows = _torch_batches(hparams, len(y), steps, batch_size)

    def train():
        for i, model in enumerate(models):
            optimiser = torch.optim.AdamW(model.parameters(), lr=float(hparams.learning_rate[i]),
                                          weight_decay=float(hparams.weight_decay[i]))
            for t in range(steps):
                optimiser.zero_grad(set_to_none=True)
                loss = torch.nn.functional.cross_entropy(model(x[rows[t, i]]), y[rows[t, i]])
                loss.backward()
                optimiser.step()

    train()  # warm-up
    return best_seconds(train, repeats)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--hidden", default="32,32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--impl", default="all", help=f"comma-separated subset of {', '.join(IMPLS)}")
    parser.add_argument("--cpu-devices", type=int, default=0,
                        help="XLA CPU devices for jax-vmap, as 'metaedit zoo' uses (0: one per core)")
    args = parser.parse_args(argv)
    if args.cpu_devices != 1:
        use_cpu_cores(args.cpu_devices or None)
    impls = IMPLS if args.impl == "all" else tuple(args.impl.split(","))

    data = datasets.load_adult()
    spec = nets.parse_arch(f"mlp:{args.hidden}", data.input_shape, data.num_classes)
    widths = (data.input_shape[0],) + spec.hidden + (spec.num_classes,)
    weights = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    flops_per_member_step = 6 * args.batch_size * weights
    hparams = population(args.members, len(data.y_train), args.steps)
    sizes = {"members": args.members, "steps": args.steps, "batch_size": args.batch_size,
             "arch": nets.describe(spec), "params_per_member": nets.num_params(spec), **machine()}

    peak = {"jax": jax_matmul_gflops()}
    emit("dense_matmul", "jax", peak["jax"], "GFLOP/s", n=2048, **machine())
    torch_ok = True
    try:
        import torch

        sizes["torch"] = torch.__version__
        sizes["torch_threads"] = torch.get_num_threads()
        peak["torch"] = torch_matmul_gflops()
        emit("dense_matmul", "torch", peak["torch"], "GFLOP/s", n=2048, **machine())
        x_torch, y_torch = torch.as_tensor(data.x_train), torch.as_tensor(data.y_train).long()
    except ImportError:
        torch_ok = False

    rates = {}
    for impl in impls:
        if impl.startswith("torch") and not torch_ok:
            emit("population_training", impl, None, "network_steps/s", skipped="torch is not installed", **sizes)
            continue
        if impl == "jax-vmap":
            seconds = run_jax_vmap(spec, hparams, Batch(jnp.asarray(data.x_train), jnp.asarray(data.y_train)),
                                   args.steps, args.batch_size, args.repeats)
        elif impl == "jax-loop":
            seconds = run_jax_loop(spec, hparams, Batch(jnp.asarray(data.x_train), jnp.asarray(data.y_train)),
                                   args.steps, args.batch_size, args.repeats)
        elif impl == "torch-vmap":
            seconds = run_torch_vmap(widths, hparams, x_torch, y_torch, args.steps, args.batch_size, args.repeats)
        elif impl == "torch-loop":
            seconds = run_torch_loop(widths, hparams, x_torch, y_torch, args.steps, args.batch_size, args.repeats)
        else:
            raise SystemExit(f"unknown impl {impl!r}; choose from {', '.join(IMPLS)}")
        rates[impl] = args.members * args.steps / seconds
        achieved = rates[impl] * flops_per_member_step / 1e9
        framework = impl.split("-")[0]
        emit("population_training", impl, rates[impl], "network_steps/s", seconds=seconds,
             gflops=achieved, fraction_of_matmul_peak=achieved / peak[framework], **sizes)
    if "jax-vmap" in rates:
        for peer, rate in rates.items():
            if peer != "jax-vmap":
                emit("population_training_speedup", f"jax-vmap/{peer}", rates["jax-vmap"] / rate, "x", **sizes)


if __name__ == "__main__":
    main()
