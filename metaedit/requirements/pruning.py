"""Pruning: the fraction of zero kernel weights; compliant at sparsity >= s.

Baselines: global magnitude pruning, alone, with fine-tuning under the fixed mask, and with the
layer-wise least-squares refit of :mod:`metaedit.refit` on the mask (its non-zeros refit to the
original network's pre-activations on training rows).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from metaedit import baselines, nets, refit
from metaedit.baselines import Baseline, BaselineResult
from metaedit.requirements.base import Requirement, straight_through


def _kernels(spec, params):
    return [params[layer.name]["kernel"] for layer in nets.layers(spec)]


def sparsity(spec: nets.Spec, params: nets.Params) -> float:
    """Exact fraction of kernel weights that are 0 (biases are not counted)."""
    kernels = [np.asarray(k) for k in _kernels(spec, params)]
    return float(sum((k == 0).sum() for k in kernels) / sum(k.size for k in kernels))


def soft_density(spec: nets.Spec, params: nets.Params, scale: float = 0.05) -> jax.Array:
    """Smooth fraction of non-zero kernel weights: the mean of ``tanh(|w| / scale)``. The scale is of
    the order of a trained weight, so a kept weight still has a gradient (``1 - exp(-w^2 / 1e-4)`` is
    flat there and under-counts small weights)."""
    kernels = _kernels(spec, params)
    return sum(jnp.tanh(jnp.abs(k) / scale).sum() for k in kernels) / sum(k.size for k in kernels)


def density_st(spec: nets.Spec, params: nets.Params) -> jax.Array:
    """Fraction of non-zero kernel weights: exact in value, with the gradient of :func:`soft_density`."""
    kernels = _kernels(spec, params)
    exact = sum((k != 0).sum() for k in kernels).astype(kernels[0].dtype) / sum(k.size for k in kernels)
    return straight_through(exact, soft_density(spec, params))


@dataclasses.dataclass(frozen=True)
class Pruning(Requirement):
    name = "pruning"
    description = "fraction of zero kernel weights; compliant when >= s"
    target_range = (0.5, 0.99)
    higher_is_compliant = True
    budget = True

    def exact(self, spec, params, batch=None) -> jax.Array:
        kernels = _kernels(spec, params)
        return sum((k == 0).sum() for k in kernels) / sum(k.size for k in kernels)

    def penalty(self, spec, params, batch=None) -> jax.Array:
        return soft_density(spec, params)

    def excess(self, spec, params, batch, target) -> jax.Array:
        return jax.nn.relu(density_st(spec, params) - (1.0 - target))

    def default_target(self) -> float:
        return 0.9

    def baselines(self) -> dict[str, Baseline]:
        return {"magnitude": Baseline(magnitude, "removal", "sparsity"),
                "magnitude+finetune": Baseline(functools.partial(magnitude, finetune_steps=200), "fine-tuning",
                                               "sparsity"),
                "magnitude+refit": Baseline(functools.partial(magnitude, refitted=True), "fine-tuning", "sparsity")}


@functools.partial(jax.jit, static_argnames=("spec", "sparsity"))
def magnitude_masks(spec: nets.Spec, params: nets.Params, sparsity: float) -> nets.Params:
    """0/1 masks [P, ...] that keep each network's largest-magnitude kernel weights (globally across
    layers) so that a ``sparsity`` fraction is zero; biases are always kept."""
    names = [layer.name for layer in nets.layers(spec)]

    def one(p):
        flat = jnp.concatenate([jnp.abs(p[n]["kernel"]).reshape(-1) for n in names])
        cut = int(np.ceil(sparsity * flat.size - 1e-9))  # at least the asked sparsity
        threshold = jnp.sort(flat)[cut - 1] if cut > 0 else -jnp.inf
        return {n: {"kernel": (jnp.abs(p[n]["kernel"]) > threshold).astype(p[n]["kernel"].dtype),
                    "bias": jnp.ones_like(p[n]["bias"])} for n in names}

    return jax.vmap(one)(params)


def magnitude(spec, params, dataset, sparsity, target=None, finetune_steps: int = 0,
              refitted: bool = False) -> BaselineResult:
    """Global magnitude pruning to ``sparsity`` (then fine-tuning under the mask, or the layer-wise refit
    on it, if asked)."""
    if refitted:
        params = jax.tree.map(jnp.asarray, params)
        x = refit.spec_rows(spec, dataset)
        pruned = lambda: jax.tree.map(jnp.multiply, params, magnitude_masks(spec, params, float(sparsity)))  # noqa: E731
        return baselines.timed(spec, params, dataset, lambda: refit.refit_population(spec, params, pruned(), x))
    return baselines.masked(spec, params, dataset, lambda: magnitude_masks(spec, params, float(sparsity)),
                            finetune_steps)
