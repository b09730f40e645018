"""Imputation edits for data minimisation: drop input groups, fold their best linear stand-in into the weights.

A network that must read at most k of a tabular data set's feature groups loses the others' columns.
Zeroing their first-layer weights (the removal baselines) also removes everything those columns
told the network that the kept columns could have told it too. This edit keeps that part:

* **Imputation.** The removed columns ``x_R`` are replaced by their best linear prediction from the
  kept ones, ``mu_R + Sigma_RK Sigma_KK^-1 (x_K - mu_K)`` (mean and covariance of the training split,
  a small ridge on ``Sigma_KK``), and the prediction is folded into the first layer:
  ``W'_K = W_K + Sigma_KK^-1 Sigma_KR W_R``, ``W'_R = 0`` (set, not computed: exactly 0 on any
  device), the bias absorbing the means. These are the first-layer weights on the kept columns
  whose pre-activations are closest, in mean square, to the original ones. Columns in no group
  are always kept.
* **Which groups.** Greedy backward elimination per network, from the groups it reads: the group
  whose removal adds least to the network's output divergence is dropped, until k are left. The
  divergence is estimated to second order (Gauss-Newton), with the curvature averaged over rows
  apart from the change (an approximation on top of the second order): ``tr(H dW^T Sigma dW)``.
  ``H`` [h, h] is the mean over rows of ``J^T F J`` (``J``: the logits' Jacobian in the first
  layer's pre-activations, ``F``: the softmax's Fisher matrix), ``dW`` the imputation's change of
  the first-layer kernel. ``dW = T_K W`` with a data-only ``T_K``, so the score is the inner product
  of ``T_K^T Sigma T_K`` (one per kept set, computed once for every network that considers it) with
  ``W H W^T`` (one per network). Memory: distinct kept sets x groups x d^2 floats per step.
* **Refit.** Every later layer is refit by least squares (a small ridge) to the original network's
  pre-activations on the same rows, given the edited network's activations (layer-wise
  reconstruction, :mod:`metaedit.refit`). The first layer's removed rows stay exactly 0. A network
  that already reads at most k groups is returned unchanged.

It is not the metanetwork (:mod:`metaedit.gmn`): it reads data, and serves data minimisation only.
Hand-written (no library folds imputation into weights); in JAX and batched over a population.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from metaedit import nets, refit
from metaedit.baselines import warm_seconds
from metaedit.datasets import Dataset
from metaedit.requirements import Minimisation, Requirement
from metaedit.requirements.minimisation import read_mask

RIDGE = 1e-3  # of the mean column variance, on the kept columns' covariance


class ImputationError(ValueError):
    """An imputation edit cannot be made here (not data minimisation, not a tabular MLP)."""


class Imputed(NamedTuple):
    """params: the edited networks [P, ...]; kept [P, G] (bool): the feature groups each one still
    reads; seconds_per_edit: warm wall time per network, the data's statistics included."""

    params: nets.Params
    kept: np.ndarray
    seconds_per_edit: float


def check(spec: nets.Spec, requirement: Requirement) -> None:
    """Raises :class:`ImputationError` unless ``spec`` and ``requirement`` admit an imputation edit."""
    if not isinstance(requirement, Minimisation):
        raise ImputationError(f"an imputation edit meets data minimisation; {requirement.name} is not it")
    if not isinstance(spec, nets.MLPSpec):
        raise ImputationError(f"an imputation edit needs an MLP on tabular features; got {nets.describe(spec)}")
    if spec.num_classes < 2:
        raise ImputationError(f"an imputation edit needs at least 2 classes (a softmax), got {spec.num_classes}")
    width = int(np.prod(spec.input_shape))
    outside = sorted({c for columns in requirement.groups for c in columns if not 0 <= c < width})
    if outside:
        raise ImputationError(f"feature groups name columns {outside[:5]} outside the network's {width} inputs")


class Statistics(NamedTuple):
    """The data's part of the edit: mean [d] and covariance [d, d] of the training split, and the
    groups' column indicators ``members`` [G, d]."""

    mean: jax.Array
    covariance: jax.Array
    members: jax.Array


def statistics(dataset: Dataset, groups) -> Statistics:
    x = np.asarray(dataset.x_train, np.float64).reshape(len(dataset.x_train), -1)
    mean = x.mean(0)
    centred = x - mean
    members = np.zeros((len(groups), x.shape[1]), np.float32)
    for i, columns in enumerate(groups):
        members[i, list(columns)] = 1.0
    return Statistics(jnp.asarray(mean, jnp.float32), jnp.asarray(centred.T @ centred / len(x), jnp.float32),
                      jnp.asarray(members))


def kept_columns(stats: Statistics, kept_groups: jax.Array) -> jax.Array:
    """[..., d] 1 on the columns kept by group masks [..., G] (0/1): a column goes when any group
    holding it goes; a column in no group stays."""
    return 1.0 - jnp.minimum(1.0, (1.0 - kept_groups) @ stats.members)


@jax.jit
def transforms(stats: Statistics, kept_groups: jax.Array) -> tuple[jax.Array, jax.Array]:
    """For kept-group masks [S, G] (0/1): ``T`` [S, d, d], the first-layer kernel's change per unit
    of kernel (``dW = T W``: the removed rows zeroed, the kept rows gaining the imputation), and
    ``Q = T^T Sigma T`` [S, d, d], the covariance of the input-side change ``(x - mu) T`` (the
    pre-activations' change has covariance ``W^T Q W``)."""
    covariance = stats.covariance
    ridge = RIDGE * jnp.trace(covariance) / covariance.shape[0]

    def one(kept):
        k = kept_columns(stats, kept)  # [d] 1 on the kept columns
        system = k[:, None] * covariance * k[None, :] + jnp.diag(1 - k + ridge * k)
        impute = jnp.linalg.solve(system, k[:, None] * covariance * (1 - k)[None, :])  # [d, d], rows K only
        change = impute - jnp.diag(1 - k)
        return change, change.T @ covariance @ change

    return jax.lax.map(one, kept_groups)


@functools.partial(jax.jit, static_argnums=0)
def curvatures(spec: nets.MLPSpec, params: nets.Params, x: jax.Array) -> jax.Array:
    """[P, d, d] ``W H W^T`` per network: the Gauss-Newton curvature of its output in the first
    layer's kernel rows, contracted with that kernel (module docstring); ``x`` [n, d]."""
    names = [layer.name for layer in nets.layers(spec)]

    def one(p):
        kernel, bias = p[names[0]]["kernel"], p[names[0]]["bias"]

        def head(z):  # the logits from one row's first-layer pre-activations, twice (the second: aux)
            logits = z if len(names) == 1 else nets.mlp_forward(spec, p, jax.nn.relu(z)[None], 1)[1][0]
            return logits, logits

        def row(z):
            jacobian, logits = jax.jacrev(head, has_aux=True)(z)  # [C, h], [C]
            probabilities = jax.nn.softmax(logits)
            fisher = jnp.diag(probabilities) - jnp.outer(probabilities, probabilities)
            return jacobian.T @ fisher @ jacobian

        curvature = jax.lax.map(row, x @ kernel + bias, batch_size=256).mean(0)
        return kernel @ curvature @ kernel.T

    return jax.lax.map(one, params)


@functools.partial(jax.jit, static_argnums=0)
def apply_transform(spec: nets.MLPSpec, params: nets.Params, change: jax.Array, kept: jax.Array,
                    dropping: jax.Array, stats: Statistics, x: jax.Array) -> nets.Params:
    """The imputed first layer (kernel ``W + T W`` on the kept columns ``kept`` [P, d] and exactly 0
    on the others, bias absorbing the means) and the least-squares refit of every later layer on rows
    ``x`` [n, d]; ``change`` [P, d, d] is each network's ``T``. Networks with ``dropping`` [P] False
    are returned as they are."""
    names = [layer.name for layer in nets.layers(spec)]

    def one(p, t, k, drop):
        out = {name: dict(p[name]) for name in names}
        kernel = p[names[0]]["kernel"]
        imputed = jnp.where(k[:, None] > 0, kernel + t @ kernel, 0.0)
        out[names[0]] = {"kernel": imputed, "bias": p[names[0]]["bias"] - stats.mean @ (imputed - kernel)}
        return jax.tree.map(lambda new, old: jnp.where(drop, new, old), refit.refit(spec, p, out, x), p)

    return jax.lax.map(lambda args: one(*args), (params, change, kept, dropping))


@functools.partial(jax.jit, static_argnums=(0, 2))
def _read_groups(spec: nets.MLPSpec, params: nets.Params, groups) -> jax.Array:
    """[P, G] bool: the groups each network of ``params`` [P, ...] reads."""
    return jax.vmap(lambda p: read_mask(spec, p, groups))(params)


def _bucket(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())


def _padded(masks: np.ndarray) -> jax.Array:
    """``masks`` [S, G] padded with keep-everything rows to a power of two (few compilations)."""
    padded = np.ones((_bucket(len(masks)), masks.shape[1]), np.float32)
    padded[:len(masks)] = masks
    return jnp.asarray(padded)


@jax.jit
def _scores(stats: Statistics, masks: jax.Array, owner: jax.Array, curvature: jax.Array) -> jax.Array:
    """[P, G]: each network's score for dropping each group from its kept set ``masks[owner]``
    (``masks`` [U, G], ``owner`` [P], ``curvature`` [P, d, d])."""
    groups = masks.shape[1]
    candidates = (masks[:, None, :] * (1 - jnp.eye(groups))[None]).reshape(-1, groups)  # [U*G, G]
    spread = transforms(stats, candidates)[1]  # [U*G, d, d]
    index = owner[:, None] * groups + jnp.arange(groups)[None]  # [P, G]
    return jax.lax.map(lambda pc: jnp.einsum("gij,ij->g", spread[pc[0]], pc[1]), (index, curvature))


def choose_groups(stats: Statistics, curvature: jax.Array, read: np.ndarray, keep: int) -> np.ndarray:
    """[P, G] bool: each network's kept groups after greedy backward elimination from the groups it
    reads, ``read`` [P, G] (bool), down to ``keep`` (module docstring); ``curvature`` [P, d, d] from
    :func:`curvatures`. The candidates' data-only part is computed once per distinct kept set."""
    kept = np.array(read, bool)
    while (kept.sum(1) > keep).any():
        masks, owner = np.unique(kept, axis=0, return_inverse=True)
        scores = np.asarray(_scores(stats, _padded(masks), jnp.asarray(owner.reshape(-1)), curvature))
        scores = np.where(kept, scores, np.inf)
        over = np.flatnonzero(kept.sum(1) > keep)
        kept[over, scores[over].argmin(1)] = False
    return kept


def edit(spec: nets.Spec, requirement: Requirement, params: nets.Params, dataset: Dataset, target: float,
         rows: int = refit.ROWS, seed: int = 0) -> Imputed:
    """Every network of ``params`` [P, ...] edited to read at most ``target`` feature groups
    (module docstring), from ``rows`` training rows (seeded by ``seed``) and the training split's
    statistics. Timed warm (one call compiles first)."""
    check(spec, requirement)
    target = requirement.check_target(target)
    if rows < 2:
        raise ImputationError(f"rows must be >= 2, got {rows}")
    x = refit.training_rows(dataset, rows, seed)
    x = x.reshape(x.shape[0], -1)
    params = jax.tree.map(jnp.asarray, params)
    keep = int(np.floor(target))

    def run():
        stats = statistics(dataset, requirement.groups)
        read = np.asarray(_read_groups(spec, params, requirement.groups))
        kept = choose_groups(stats, curvatures(spec, params, x), read, keep)
        masks, owner = np.unique(kept, axis=0, return_inverse=True)
        change = transforms(stats, _padded(masks))[0][jnp.asarray(owner.reshape(-1))]
        columns = kept_columns(stats, jnp.asarray(kept, jnp.float32))
        dropping = jnp.asarray((kept != read).any(1))
        return apply_transform(spec, params, change, columns, dropping, stats, x), kept

    (edited, kept), seconds = warm_seconds(run, nets.population_size(params))
    return Imputed(edited, kept, seconds)
