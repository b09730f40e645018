"""Requirements a network must meet, as a registry: a soft training loss and an exact compliance test.

Each :class:`Requirement` has
  * ``penalty(spec, params, batch) -> []``: a differentiable measure R in [0, 1] to minimise
    (soft predictions, smooth counts), used in editor training as ``lambda * R + (1 - lambda) * JSD``;
  * ``measure(spec, params, data) -> float``: the exact metric on concrete data and weights;
  * ``complies(value, target) -> bool``: the hard compliance test at a requirement target
    (k groups, epsilon, sparsity s), with ``target_range`` for sampling targets in training;
  * ``excess(spec, params, batch, target) -> []``: the amount by which the target is missed on the
    batch (exactly 0 once it is met), the R of editor training when the target is part of the
    condition; its value is the exact hard metric and its gradient a smooth surrogate's
    (:func:`straight_through`);
  * ``whole_split``: True when training should measure the excess on the whole training split
    rather than a minibatch (a gap over a small cell, e.g. women with a positive label in Adult,
    is too noisy on a few hundred rows and pushes an editor towards a constant predictor).

Registered: ``minimisation`` (raw feature groups the network still reads), ``fairness``
(equalised-odds gap; ``demographic_parity`` beside it) and ``pruning`` (sparsity of the weights).
Utility helpers: :func:`jsd` and :func:`accuracy`. All functions take one network; vmap them over a
population.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from metaedit import nets


class RequirementError(ValueError):
    """An unknown requirement, or one that the data or network cannot support."""


class Batch(NamedTuple):
    """x [n, ...], y [n] int, s [n] int (sensitive attribute; zeros where unused)."""

    x: Any
    y: Any
    s: Any


@dataclasses.dataclass(frozen=True)
class Requirement:
    """See the module docstring. ``higher_is_compliant``: True when compliance means measure >= target."""

    name: str
    penalty: Callable[..., jax.Array]
    measure: Callable[..., float]
    target_range: tuple[float, float]
    higher_is_compliant: bool
    description: str
    excess: Callable[..., jax.Array]
    whole_split: bool = False

    def complies(self, value: float, target: float) -> bool:
        return bool(value >= target) if self.higher_is_compliant else bool(value <= target)


# --------------------------------------------------------------------------- utility


def jsd(logits_p: jax.Array, logits_q: jax.Array) -> jax.Array:
    """Mean Jensen-Shannon divergence (nats) between the softmax distributions of [n, C] logits."""
    log_p, log_q = jax.nn.log_softmax(logits_p), jax.nn.log_softmax(logits_q)
    log_m = jnp.logaddexp(log_p, log_q) - jnp.log(2.0)
    kl = lambda log_a: (jnp.exp(log_a) * (log_a - log_m)).sum(-1)  # noqa: E731
    return (0.5 * (kl(log_p) + kl(log_q))).mean()


def accuracy(spec: nets.Spec, params: nets.Params, x, y) -> jax.Array:
    return (nets.apply(spec, params, x).argmax(-1) == y).mean()


def straight_through(exact: jax.Array, smooth: jax.Array) -> jax.Array:
    """The value of ``exact`` with the gradient of ``smooth``.

    The editor's ``excess`` terms use it: their forward value is the exact hard metric on the batch
    (so a met target gives exactly 0 and an unmet one is not under-counted), and their gradient
    comes from a smooth surrogate of that metric.
    """
    return smooth + jax.lax.stop_gradient(exact - smooth)


# --------------------------------------------------------------------------- data minimisation


def _input_rows(spec: nets.Spec, params: nets.Params) -> jax.Array:
    """[d, out] the first layer's outgoing weights per input column (an MLP's first kernel)."""
    if not isinstance(spec, nets.MLPSpec):
        raise RequirementError("data minimisation needs an MLP on tabular features")
    return params[nets.layers(spec)[0].name]["kernel"]


def groups_read(spec: nets.Spec, params: nets.Params, groups: Sequence[Sequence[int]]) -> int:
    """Exact number of feature groups with at least one non-zero outgoing weight."""
    rows = np.asarray(_input_rows(spec, params))
    return int(sum(bool((rows[list(g)] != 0).any()) for g in groups))


def soft_groups_read(spec: nets.Spec, params: nets.Params, groups: Sequence[Sequence[int]],
                     scale: float = 1.0) -> jax.Array:
    """Smooth fraction of groups read: mean over groups of ``tanh(||W_g|| / scale)``.

    The scale is of the order of a trained group's weight norm, so the measure keeps a gradient
    (a sharper ``1 - exp(-||W_g||^2 / 0.01)`` saturated at 1 and gave the editor nothing to learn).
    """
    return jnp.tanh(_group_norms(spec, params, groups) / scale).mean()


def _group_norms(spec, params, groups) -> jax.Array:
    rows = _input_rows(spec, params)
    return jnp.stack([jnp.sqrt((rows[jnp.asarray(g)] ** 2).sum() + 1e-12) for g in groups])


def groups_read_st(spec: nets.Spec, params: nets.Params, groups: Sequence[Sequence[int]],
                   scale: float = 1.0) -> jax.Array:
    """Fraction of groups read: exact in value (a group is read when any outgoing weight is
    non-zero), with the gradient of :func:`soft_groups_read`."""
    rows = _input_rows(spec, params)
    exact = jnp.stack([jnp.any(rows[jnp.asarray(g)] != 0) for g in groups]).astype(rows.dtype).mean()
    return straight_through(exact, soft_groups_read(spec, params, groups, scale))


# --------------------------------------------------------------------------- fairness


def _positive_probability(spec, params, x) -> jax.Array:
    return jax.nn.softmax(nets.apply(spec, params, x))[:, 1]


def _rate(values, mask):
    return (values * mask).sum() / jnp.maximum(mask.sum(), 1)


def equalised_odds_gap(y_true, y_score, s) -> jax.Array:
    """max over y in {0, 1} of |P(yhat=1 | s=1, Y=y) - P(yhat=1 | s=0, Y=y)|; y_score may be soft."""
    gaps = []
    for label in (0, 1):
        in_label = (y_true == label).astype(y_score.dtype)
        a = _rate(y_score, in_label * (s == 1))
        b = _rate(y_score, in_label * (s == 0))
        gaps.append(jnp.abs(a - b))
    return jnp.maximum(*gaps)


def demographic_parity_gap(y_score, s) -> jax.Array:
    """|P(yhat=1 | s=1) - P(yhat=1 | s=0)|; y_score may be soft."""
    ones = jnp.ones_like(y_score)
    return jnp.abs(_rate(y_score, ones * (s == 1)) - _rate(y_score, ones * (s == 0)))


def _check_binary(spec: nets.Spec, what: str) -> None:
    if spec.num_classes != 2:
        raise RequirementError(f"{what} needs a binary classifier; this network has {spec.num_classes} classes")


def hard_equalised_odds(spec, params, batch: Batch) -> float:
    _check_binary(spec, "equalised odds")
    predictions = (nets.apply(spec, params, batch.x).argmax(-1) == 1).astype(jnp.float32)
    return float(equalised_odds_gap(batch.y, predictions, batch.s))


def soft_equalised_odds(spec, params, batch: Batch) -> jax.Array:
    return equalised_odds_gap(batch.y, _positive_probability(spec, params, batch.x), batch.s)


def _hard_and_soft_positive(spec, params, x):
    probability = _positive_probability(spec, params, x)
    return straight_through((probability > 0.5).astype(probability.dtype), probability)


def equalised_odds_st(spec, params, batch: Batch) -> jax.Array:
    """The hard equalised-odds gap on the batch in value, with the soft gap's gradient."""
    return equalised_odds_gap(batch.y, _hard_and_soft_positive(spec, params, batch.x), batch.s)


def demographic_parity_st(spec, params, batch: Batch) -> jax.Array:
    """The hard demographic-parity gap on the batch in value, with the soft gap's gradient."""
    return demographic_parity_gap(_hard_and_soft_positive(spec, params, batch.x), batch.s)


def hard_demographic_parity(spec, params, batch: Batch) -> float:
    _check_binary(spec, "demographic parity")
    predictions = (nets.apply(spec, params, batch.x).argmax(-1) == 1).astype(jnp.float32)
    return float(demographic_parity_gap(predictions, batch.s))


def soft_demographic_parity(spec, params, batch: Batch) -> jax.Array:
    return demographic_parity_gap(_positive_probability(spec, params, batch.x), batch.s)


# --------------------------------------------------------------------------- pruning


def _kernels(spec, params):
    return [params[layer.name]["kernel"] for layer in nets.layers(spec)]


def sparsity(spec: nets.Spec, params: nets.Params) -> float:
    """Exact fraction of kernel weights that are 0 (biases are not counted)."""
    kernels = [np.asarray(k) for k in _kernels(spec, params)]
    return float(sum((k == 0).sum() for k in kernels) / sum(k.size for k in kernels))


def soft_density(spec: nets.Spec, params: nets.Params, scale: float = 1e-4) -> jax.Array:
    """Smooth fraction of non-zero kernel weights: mean of ``1 - exp(-w^2 / scale)``."""
    kernels = _kernels(spec, params)
    total = sum(k.size for k in kernels)
    return sum((1.0 - jnp.exp(-(k ** 2) / scale)).sum() for k in kernels) / total


def density_st(spec: nets.Spec, params: nets.Params, scale: float = 0.05) -> jax.Array:
    """Fraction of non-zero kernel weights: exact in value, with the gradient of the mean of
    ``tanh(|w| / scale)``. The scale is of the order of a trained weight, so a kept weight's mask
    still receives a gradient (``1 - exp(-w^2 / 1e-4)`` is flat there and under-counts small weights)."""
    kernels = _kernels(spec, params)
    total = sum(k.size for k in kernels)
    exact = sum((k != 0).sum() for k in kernels).astype(kernels[0].dtype) / total
    smooth = sum(jnp.tanh(jnp.abs(k) / scale).sum() for k in kernels) / total
    return straight_through(exact, smooth)


# --------------------------------------------------------------------------- registry


def _minimisation(groups: Sequence[Sequence[int]]) -> Requirement:
    count = float(len(groups))
    return Requirement(
        name="minimisation",
        penalty=lambda spec, params, batch: soft_groups_read(spec, params, groups),
        measure=lambda spec, params, batch: groups_read(spec, params, groups),
        target_range=(1.0, count),
        higher_is_compliant=False,
        description="number of raw feature groups the network reads; compliant when <= k",
        excess=lambda spec, params, batch, k: jax.nn.relu(groups_read_st(spec, params, groups) - k / count),
    )


def _gap_requirement(name: str, soft, hard, exact_st, what: str) -> Requirement:
    """A fairness gap: compliant when the hard gap on held-out data is <= epsilon."""
    return Requirement(
        name=name,
        penalty=soft,
        measure=hard,
        target_range=(0.0, 0.2),
        higher_is_compliant=False,
        description=f"{what} gap; compliant when <= epsilon",
        excess=lambda spec, params, batch, eps: jax.nn.relu(exact_st(spec, params, batch) - eps),
        whole_split=True,
    )


FAIRNESS = _gap_requirement("fairness", soft_equalised_odds, hard_equalised_odds, equalised_odds_st,
                            "equalised-odds")
DEMOGRAPHIC_PARITY = _gap_requirement("demographic_parity", soft_demographic_parity, hard_demographic_parity,
                                      demographic_parity_st, "demographic-parity")

PRUNING = Requirement(
    name="pruning",
    penalty=lambda spec, params, batch: soft_density(spec, params),
    measure=lambda spec, params, batch: sparsity(spec, params),
    target_range=(0.5, 0.99),
    higher_is_compliant=True,
    description="fraction of zero kernel weights; compliant when >= s",
    excess=lambda spec, params, batch, s: jax.nn.relu(density_st(spec, params) - (1.0 - s)),
)

NAMES = ("minimisation", "fairness", "demographic_parity", "pruning")


def get(name: str, feature_groups: Sequence[Sequence[int]] = ()) -> Requirement:
    """The requirement registered as ``name`` (minimisation needs the data set's feature groups)."""
    if name == "minimisation":
        if not feature_groups:
            raise RequirementError("data minimisation needs the data set's feature groups (a tabular data set)")
        return _minimisation(feature_groups)
    table = {"fairness": FAIRNESS, "demographic_parity": DEMOGRAPHIC_PARITY, "pruning": PRUNING}
    if name not in table:
        raise RequirementError(f"unknown requirement {name!r}; known: {', '.join(NAMES)}")
    return table[name]
