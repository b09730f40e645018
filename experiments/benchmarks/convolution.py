"""Convolution for populations and for one network: the project's choice against its two halves and
PyTorch, side by side in one run.

    python -m experiments.benchmarks.convolution [--members 128] [--repeats 5] [--no-torch]

Each case times the gradient of a CNN's summed cross-entropy with respect to its parameters, warm
(compilation timed apart), in three JAX implementations of the same convolution:

* ``xla``: ``lax.conv_general_dilated`` everywhere (vmapped over networks, XLA makes it a grouped
  convolution);
* ``sliced``: :func:`metaedit.convolution.sliced_conv` everywhere (shifted slices, one matmul);
* ``chosen``: :func:`metaedit.convolution.conv`, which the project uses: XLA's convolution unless the
  kernel is batched, the sliced form for the derivative of small convolutions on a CPU;

and ``torch``: ``torch.func.vmap(grad(functional_call))`` of ``nn.Conv2d`` layers (one network: a
plain ``backward``). Cases: a population of digits CNNs (``cnn:16,32``, batch 32), one gradient, and
5 SGD steps inside ``lax.scan`` as ``metaedit zoo`` trains them (XLA runs convolutions more slowly
inside loop bodies; PyTorch: a Python loop); one digits CNN at batch 512; the safe-updates paper's
MNIST CNN at batch 512. Prints one JSON line per measurement (milliseconds per gradient or step of
the whole case, warm; ``compile_s``: the first call, compilation and one run).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from experiments.benchmarks.common import best_seconds, emit, machine
from metaedit import convolution, nets

IMPLS = {"xla": convolution.xla_conv, "sliced": convolution.sliced_conv, "chosen": convolution.conv}


def _loss(spec, conv, params, x, y):
    logits = nets.apply(spec, params, x, convolve=conv)
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1).sum()


def cases(members: int):
    digits = nets.parse_arch("cnn:16,32", (8, 8, 1), 10)
    return (("population", digits, members, 32, 0), ("population, lax.scan", digits, members, 32, 5),
            ("one network", digits, None, 512, 0), ("one network", nets.paper_cnn(), None, 512, 0))


def time_jax(spec, population, batch, conv, repeats, steps=0):
    key = jax.random.key(0)
    x = jax.random.normal(key, (batch,) + tuple(spec.input_shape))
    y = jax.random.randint(key, (batch,), 0, spec.num_classes)
    grad = jax.grad(lambda p: _loss(spec, conv, p, x, y))
    if population is None:
        params, run = nets.init(spec, key), jax.jit(grad)
    else:
        params = jax.vmap(lambda k: nets.init(spec, k))(jax.random.split(key, population))
        run = jax.jit(jax.vmap(grad))
    if steps:
        gradients = jax.vmap(grad) if population else grad
        step = lambda p, _: (jax.tree.map(lambda w, g: w - 1e-3 * g, p, gradients(p)), None)  # noqa: E731
        run = jax.jit(lambda p: jax.lax.scan(step, p, None, length=steps)[0])
    started = time.perf_counter()
    jax.block_until_ready(run(params))
    compile_seconds = time.perf_counter() - started
    per = max(steps, 1)
    return best_seconds(lambda: jax.block_until_ready(run(params)), repeats) / per, compile_seconds


def time_torch(spec, population, batch, repeats, steps=0):
    import torch
    from torch.func import functional_call, grad, stack_module_state, vmap

    torch.set_num_threads(max(1, torch.get_num_threads()))

    def module():
        layers, channels = [], (spec.input_shape[-1],) + tuple(spec.channels)
        for i, padding in enumerate(spec.paddings):
            layers += [torch.nn.Conv2d(channels[i], channels[i + 1], spec.kernel_size, padding=padding),
                       torch.nn.ReLU()]
        pool = torch.nn.Flatten() if spec.head == "flatten" else torch.nn.Sequential(
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        return torch.nn.Sequential(*layers, pool, torch.nn.Linear(spec.head_inputs, spec.num_classes))

    x = torch.randn(batch, spec.input_shape[-1], *spec.input_shape[:-1])
    y = torch.randint(0, spec.num_classes, (batch,))
    loss = torch.nn.CrossEntropyLoss(reduction="sum")
    if population is None:
        net = module()

        def run():
            net.zero_grad()
            loss(net(x), y).backward()
    else:
        models = [module() for _ in range(population)]
        params, buffers = stack_module_state(models)
        base = module().to("meta")
        per_network = grad(lambda p, b: loss(functional_call(base, (p, b), (x,)), y))

        def run():
            for _ in range(max(steps, 1)):
                gradients = vmap(per_network)(params, buffers)
                if steps:
                    with torch.no_grad():
                        for name in params:
                            params[name] -= 1e-3 * gradients[name]
    run()
    return best_seconds(run, repeats) / max(steps, 1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=128, help="networks in the population case")
    parser.add_argument("--repeats", type=int, default=5, help="timings per measurement (the fastest is kept)")
    parser.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True,
                        help="time PyTorch's convolution too (default: on)")
    args = parser.parse_args(argv)
    emit("convolution", "machine", 0.0, "", **machine())
    for case, spec, population, batch, steps in cases(args.members):
        unit = "ms/step" if steps else "ms/gradient"
        sizes = {"case": case, "arch": nets.describe(spec), "members": population or 1, "batch": batch}
        for impl, conv in IMPLS.items():
            repeats = min(args.repeats, 2) if steps else args.repeats  # XLA's grouped scan takes ~30 s a run
            seconds, compile_seconds = time_jax(spec, population, batch, conv, repeats, steps)
            emit("convolution", impl, seconds * 1e3, unit, compile_s=round(compile_seconds, 2), **sizes)
        if args.torch:
            emit("convolution", "torch", time_torch(spec, population, batch, repeats, steps) * 1e3, unit, **sizes)


if __name__ == "__main__":
    main()
