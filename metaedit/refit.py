"""Layer-wise least-squares reconstruction: an edited network's weights refit to the original's function.

An edit that zeroes weights (pruning, data minimisation) keeps its zeros and loses what they did.
Layer by layer, from the input, each layer of the edited network is refit by ridge least squares so
that its pre-activations, computed from the *edited* network's activations, match the *original*
network's pre-activations on training rows. With ``masked``, each output neuron is refit on the
weights the edit kept (its non-zeros) only, so every zero stays exactly 0 and the requirement's value
can only improve (a refit weight may come out 0 too: a neuron dead on every row gets zero outgoing
weights). Biases are always free. Which layers keep their zeros is the requirement's business:
pruning counts every layer's, data minimisation only the first layer's input rows.

MLPs and CNNs: a convolution is refit like a dense layer whose inputs are the input windows at
every output position (:func:`metaedit.convolution.patches`; each position of each row is one row of
the least-squares problem), and a CNN's head on what it reads (:func:`metaedit.nets.head_input`).
A CNN is refit on fewer rows, so that rows x positions stays near ``ROWS * 16``.

It reads data (training rows) and the original network, not the metanetwork: applied after the
editor's edit it is a data-aware second step (the ``editor+refit`` rows of :mod:`metaedit.compare`).
Hand-written (a few lines of linear algebra; no library refits a network layer-wise), in JAX and
batched over a population.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from metaedit import nets
from metaedit.baselines import warm_seconds
from metaedit.convolution import output_spatial, patches
from metaedit.datasets import Dataset

ROWS = 2048  # training rows the layers are refit on
RIDGE = 1e-4  # of the mean squared activation, on each layer's normal equations


def rows_for(spec: nets.Spec, rows: int = ROWS) -> int:
    """How many training rows a refit of ``spec`` uses: ``rows`` for an MLP; for a CNN, fewer (at least
    256) so that rows x output positions of its largest feature map (the first convolution's: stride-1
    maps never grow) stays near ``rows * 16``."""
    if not isinstance(spec, nets.CNNSpec):
        return rows
    first = nets.layers(spec)[0]
    positions = int(np.prod(output_spatial(spec.input_shape[:-1], first.kernel_shape[:-2], first.padding)))
    return int(min(rows, max(256, rows * 16 // positions)))


def spec_rows(spec: nets.Spec, dataset: Dataset) -> jax.Array:
    """[n, *input_shape] the training rows a refit of ``spec`` uses (:func:`rows_for`, seeded)."""
    return training_rows(dataset, rows_for(spec))


def training_rows(dataset: Dataset, rows: int = ROWS, seed: int = 0) -> jax.Array:
    """[n, *input_shape] ``rows`` training rows drawn without replacement (seeded)."""
    chosen = np.random.default_rng(seed).choice(len(dataset.x_train), size=min(rows, len(dataset.x_train)),
                                                replace=False)
    return jnp.asarray(np.asarray(dataset.x_train[chosen], np.float32))


def _inputs(layer: nets.Layer, h: jax.Array) -> jax.Array:
    """[rows, fan_in]: what ``layer``'s kernel multiplies, one row per example (dense) or per example
    and output position (conv)."""
    if layer.kind == "conv":
        h = patches(h, layer.kernel_shape[:-2], layer.padding)
    return h.reshape(-1, layer.fan_in)


def _solve(gram: jax.Array, rhs: jax.Array, mask: jax.Array | None) -> jax.Array:
    """[in + 1, out] ridge solution of ``gram w = rhs`` (``gram`` [in + 1, in + 1] of the design with a
    ones column last), per output column on ``mask`` [in, out]'s support when given."""
    ridge = RIDGE * jnp.trace(gram) / gram.shape[0]
    if mask is None:
        return jnp.linalg.solve(gram + ridge * jnp.eye(gram.shape[0]), rhs)
    support = jnp.concatenate([mask, jnp.ones((1, mask.shape[1]), mask.dtype)], 0)  # the bias is free

    def column(on, target):
        system = on[:, None] * gram * on[None, :] + jnp.diag(1 - on + ridge * on)
        return jnp.linalg.solve(system, on * target)

    return jax.lax.map(lambda args: column(*args), (support.T, rhs.T)).T


def refit(spec: nets.Spec, original: nets.Params, edited: nets.Params, x: jax.Array, start: int = 1,
          masked: bool = False, masked_layers: int | None = None) -> nets.Params:
    """``edited`` (one network) with every layer from ``start`` on refit by ridge least squares to
    ``original``'s pre-activations on ``x`` [n, *input_shape], given ``edited``'s own activations; with
    ``masked``, on each layer's non-zeros only (module docstring): the first ``masked_layers``
    layers (None: all), the others on every weight."""
    all_layers = nets.layers(spec)
    out = {layer.name: dict(edited[layer.name]) for layer in all_layers}
    cnn = isinstance(spec, nets.CNNSpec)
    h_original = h_edited = x if cnn else x.reshape(x.shape[0], -1)
    for i, layer in enumerate(all_layers):
        name, product = layer.name, nets.linear_map(layer)
        if cnn and i == len(all_layers) - 1:
            h_original, h_edited = nets.head_input(spec, h_original), nets.head_input(spec, h_edited)
        z_original = product(h_original, original[name]["kernel"]) + original[name]["bias"]
        if i >= start:
            inputs = _inputs(layer, h_edited)
            design = jnp.concatenate([inputs, jnp.ones((inputs.shape[0], 1), inputs.dtype)], 1)
            target = z_original.reshape(-1, z_original.shape[-1])
            keep_zeros = masked and (masked_layers is None or i < masked_layers)
            flat_kernel = edited[name]["kernel"].reshape(layer.fan_in, -1)
            mask = (flat_kernel != 0).astype(design.dtype) if keep_zeros else None
            solution = _solve(design.T @ design / design.shape[0], design.T @ target / design.shape[0], mask)
            kernel = solution[:-1] if mask is None else jnp.where(mask > 0, solution[:-1], 0.0)
            out[name] = {"kernel": kernel.reshape(layer.kernel_shape), "bias": solution[-1]}
        z_edited = product(h_edited, out[name]["kernel"]) + out[name]["bias"]
        if i < len(all_layers) - 1:
            h_original, h_edited = jax.nn.relu(z_original), jax.nn.relu(z_edited)
    return out


@functools.partial(jax.jit, static_argnums=(0, 4))
def refit_population(spec: nets.Spec, original: nets.Params, edited: nets.Params, x: jax.Array,
                     masked_layers: int | None = None) -> nets.Params:
    """Every network of ``edited`` [P, ...] refit, all layers, to its original in ``original`` [P, ...]
    on ``x`` [n, *input_shape], the first ``masked_layers`` layers (None: all) on their own zeros."""
    return jax.lax.map(lambda pair: refit(spec, *pair, x, start=0, masked=True, masked_layers=masked_layers),
                       (original, edited))


def refit_edits(spec: nets.Spec, original: nets.Params, edited: nets.Params, dataset: Dataset,
                masked_layers: int | None = None) -> tuple[nets.Params, float]:
    """Every edited network of ``edited`` [P, ...] refit, all layers, to its original in ``original``
    [P, ...] on :func:`rows_for` training rows, the first ``masked_layers`` layers (None: all) on their own
    zero pattern: (the refit networks, warm seconds per network; one call compiles first)."""
    run = functools.partial(refit_population, spec, jax.tree.map(jnp.asarray, original), jax.tree.map(jnp.asarray, edited),
                            spec_rows(spec, dataset), masked_layers)
    return warm_seconds(run, nets.population_size(edited))
