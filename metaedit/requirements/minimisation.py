"""Data minimisation: the raw feature groups a network still reads; compliant when it reads <= k.

A group is unread when every outgoing first-layer weight of its columns is exactly 0 (an MLP on
tabular features). Baselines: removal by first-layer group norm or by permutation importance, each
with and without fine-tuning under the fixed mask, and retraining from scratch on the kept groups.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from metaedit import baselines, nets
from metaedit.baselines import Baseline, BaselineResult
from metaedit.datasets import Dataset
from metaedit.requirements.base import Requirement, RequirementError, straight_through

Groups = tuple[tuple[int, ...], ...]


def _check_mlp(spec: nets.Spec) -> None:
    if not isinstance(spec, nets.MLPSpec):
        raise RequirementError("data minimisation needs an MLP on tabular features")


def _input_rows(spec: nets.Spec, params: nets.Params) -> jax.Array:
    """[d, out] the first layer's outgoing weights per input column (an MLP's first kernel)."""
    _check_mlp(spec)
    return params[nets.layers(spec)[0].name]["kernel"]


def groups_read(spec: nets.Spec, params: nets.Params, groups: Sequence[Sequence[int]]) -> int:
    """Exact number of feature groups with at least one non-zero outgoing weight."""
    rows = np.asarray(_input_rows(spec, params))
    return int(sum(bool((rows[list(g)] != 0).any()) for g in groups))


def read_mask(spec: nets.Spec, params: nets.Params, groups: Sequence[Sequence[int]]) -> jax.Array:
    """[G] bool: whether each feature group has a non-zero outgoing first-layer weight (is read)."""
    rows = _input_rows(spec, params)
    return jnp.stack([jnp.any(rows[jnp.asarray(g)] != 0) for g in groups])


def group_norms(spec: nets.Spec, params: nets.Params, groups: Sequence[Sequence[int]]) -> jax.Array:
    """[G] the first-layer weight norm of each group's columns."""
    rows = _input_rows(spec, params)
    return jnp.stack([jnp.sqrt((rows[jnp.asarray(g)] ** 2).sum() + 1e-12) for g in groups])


def soft_groups_read(spec: nets.Spec, params: nets.Params, groups: Sequence[Sequence[int]],
                     scale: float = 1.0) -> jax.Array:
    """Smooth fraction of groups read: mean over groups of ``tanh(||W_g|| / scale)``.

    The scale is of the order of a trained group's weight norm, so the measure keeps a gradient
    (a sharper ``1 - exp(-||W_g||^2 / 0.01)`` saturated at 1 and gave the editor nothing to learn).
    """
    return jnp.tanh(group_norms(spec, params, groups) / scale).mean()


def groups_read_st(spec: nets.Spec, params: nets.Params, groups: Sequence[Sequence[int]]) -> jax.Array:
    """Fraction of groups read: exact in value (a group is read when any outgoing weight is
    non-zero), with the gradient of :func:`soft_groups_read`."""
    exact = read_mask(spec, params, groups).astype(_input_rows(spec, params).dtype).mean()
    return straight_through(exact, soft_groups_read(spec, params, groups))


@dataclasses.dataclass(frozen=True)
class Minimisation(Requirement):
    """``groups``: the data set's feature groups (column indices of each raw attribute)."""

    groups: Groups
    name = "minimisation"
    description = "number of raw feature groups the network reads; compliant when <= k"
    higher_is_compliant = False

    def __post_init__(self):
        if not self.groups:
            raise RequirementError("data minimisation needs the data set's feature groups (a tabular data set)")

    @property
    def target_range(self) -> tuple[float, float]:
        return (1.0, float(len(self.groups)))

    def exact(self, spec, params, batch=None) -> jax.Array:
        return read_mask(spec, params, self.groups).sum()

    def check_network(self, spec) -> None:
        _check_mlp(spec)

    def penalty(self, spec, params, batch=None) -> jax.Array:
        return soft_groups_read(spec, params, self.groups)

    def excess(self, spec, params, batch, target) -> jax.Array:
        return jax.nn.relu(groups_read_st(spec, params, self.groups) - target / len(self.groups))

    def default_target(self) -> float:
        return float(len(self.groups) // 2)

    def check(self, spec, dataset) -> None:
        _check_mlp(spec)

    def baselines(self) -> dict[str, Baseline]:
        return {
            "group_norm": Baseline(group_norm, "removal", "kept"),
            "group_norm+finetune": Baseline(functools.partial(group_norm, finetune_steps=200), "fine-tuning", "kept"),
            "permutation": Baseline(permutation, "removal", "kept"),
            "permutation+finetune": Baseline(functools.partial(permutation, finetune_steps=200), "fine-tuning",
                                             "kept"),
            "retrain": Baseline(retrain_on_groups, "retraining", "kept"),
        }


def _keep_groups(spec, p, groups, kept) -> nets.Params:
    """0/1 masks for one network that zero the first-layer rows of every group not in ``kept`` [k]."""
    first = nets.layers(spec)[0].name
    rows = p[first]["kernel"]
    column_keep = jnp.zeros(rows.shape[0], rows.dtype)
    for i, g in enumerate(groups):
        column_keep = column_keep.at[jnp.asarray(g)].set(jnp.any(kept == i).astype(rows.dtype))
    masks = jax.tree.map(jnp.ones_like, p)
    masks[first] = {"kernel": jnp.broadcast_to(column_keep[:, None], rows.shape), "bias": jnp.ones_like(p[first]["bias"])}
    return masks


@functools.partial(jax.jit, static_argnames=("spec", "groups", "keep"))
def group_masks(spec: nets.Spec, params: nets.Params, groups: Groups, keep: int) -> nets.Params:
    """0/1 masks [P, ...] zeroing the first-layer rows of all but the ``keep`` groups with the
    largest first-layer weight norm."""
    return jax.vmap(lambda p: _keep_groups(spec, p, groups, jnp.argsort(-group_norms(spec, p, groups))[:keep]))(params)


@functools.partial(jax.jit, static_argnames=("spec", "groups", "keep"))
def _permutation_masks(spec, params, x, y, shuffled, groups: Groups, keep: int) -> nets.Params:
    def one(p):
        base = (nets.apply(spec, p, x).argmax(-1) == y).mean()
        permuted = jax.vmap(lambda xs: (nets.apply(spec, p, xs).argmax(-1) == y).mean())(shuffled)
        return _keep_groups(spec, p, groups, jnp.argsort(-(base - permuted))[:keep])

    return jax.vmap(one)(params)


def permutation_masks(spec: nets.Spec, params: nets.Params, dataset: Dataset, keep: int, rows: int = 2048,
                      seed: int = 0) -> nets.Params:
    """Like :func:`group_masks`, ranking the groups by permutation importance: the accuracy a
    network loses on ``rows`` training rows when one group's columns are shuffled across rows
    (the same shuffle for every network)."""
    groups = _groups(dataset)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(dataset.y_train), size=min(rows, len(dataset.y_train)), replace=False)
    x = np.asarray(dataset.x_train[chosen])
    shuffled = []
    for g in groups:
        copy = x.copy()
        copy[:, list(g)] = x[rng.permutation(len(x))][:, list(g)]
        shuffled.append(copy)
    return _permutation_masks(spec, params, jnp.asarray(x), jnp.asarray(dataset.y_train[chosen]),
                              jnp.asarray(np.stack(shuffled)), groups=groups, keep=int(keep))


def _groups(dataset: Dataset) -> Groups:
    return tuple(tuple(g) for g in dataset.feature_groups)


def group_norm(spec, params, dataset, keep, target=None, finetune_steps: int = 0) -> BaselineResult:
    """Keep the ``keep`` groups of largest first-layer norm (then fine-tune under the mask, if asked)."""
    return baselines.masked(spec, params, dataset, lambda: group_masks(spec, params, _groups(dataset), int(keep)),
                            finetune_steps)


def permutation(spec, params, dataset, keep, target=None, finetune_steps: int = 0) -> BaselineResult:
    """Keep the ``keep`` groups of largest permutation importance (then fine-tune, if asked)."""
    return baselines.masked(spec, params, dataset, lambda: permutation_masks(spec, params, dataset, int(keep)),
                            finetune_steps)


def retrain_on_groups(spec, params, dataset, keep, target=None, steps: int = 1000) -> BaselineResult:
    """A fresh network per network, trained with only the ``keep`` groups its group norm ranks first."""
    def make():
        masks = group_masks(spec, params, _groups(dataset), int(keep))
        return baselines.finetune(spec, baselines.fresh(spec, params), masks, dataset, steps)
    return baselines.timed(spec, params, dataset, make)
