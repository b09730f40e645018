"""The requirement interface, and the utility measures every requirement shares (JSD, accuracy).

A :class:`Requirement` is a frozen (hashable) dataclass, so it can be a static argument of a jitted
function. Each one provides:

* ``exact(spec, params, batch) -> []``: the exact metric of one network, traceable (jit, vmap);
  ``measure`` is its value on concrete data, with the requirement's checks;
* ``penalty(spec, params, batch) -> []``: a smooth surrogate of that metric, differentiable;
* ``excess(spec, params, batch, target) -> []``: by how much the target is missed on the batch,
  exactly 0 once it is met. Its value is the exact hard metric and its gradient the penalty's
  (:func:`straight_through`): the R of editor training, ``lambda * R + (1 - lambda) * JSD``;
* ``complies(value, target)``, ``target_range`` (sampled in editor training), ``default_target``,
  ``safety_margin`` (editor training aims this much stricter than asked), ``whole_split`` (the
  excess is measured on the whole training split, not a minibatch: a gap over a small cell, e.g.
  women with a positive label in Adult, is too noisy on a few hundred rows);
* ``check(spec, dataset)``: a clear :class:`RequirementError` when the requirement cannot apply;
* ``baselines()``: the comparison methods that meet it by other means.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from metaedit import nets
from metaedit.baselines import Baseline, BaselineResult, split_batch
from metaedit.datasets import Dataset
from metaedit.training import Batch


class RequirementError(ValueError):
    """An unknown requirement, or one that the data or network cannot support."""


@dataclasses.dataclass(frozen=True)
class Requirement(abc.ABC):
    """See the module docstring. Subclasses set the class attributes and implement the methods."""

    name: ClassVar[str]
    description: ClassVar[str]
    target_range: ClassVar[tuple[float, float]]
    higher_is_compliant: ClassVar[bool]
    whole_split: ClassVar[bool] = False
    safety_margin: ClassVar[float] = 0.0
    removes: ClassVar[bool] = True  # whether an edit may remove weights and neurons to meet it
    budget: ClassVar[bool] = False  # whether the target is a share of weights to remove (a budgeted editor)

    @abc.abstractmethod
    def exact(self, spec: nets.Spec, params: nets.Params, batch: Batch | None) -> jax.Array:
        """The exact metric of one network, traceable."""

    def measure(self, spec: nets.Spec, params: nets.Params, batch: Batch | None) -> float:
        """The exact metric of one network on concrete data (after :meth:`check_network`)."""
        self.check_network(spec)
        return float(self.exact(spec, params, batch))

    def check_network(self, spec: nets.Spec) -> None:
        """Raises :class:`RequirementError` when the requirement cannot be measured on ``spec``."""

    @abc.abstractmethod
    def penalty(self, spec: nets.Spec, params: nets.Params, batch: Batch | None) -> jax.Array:
        """A smooth, differentiable surrogate of the metric."""

    @abc.abstractmethod
    def excess(self, spec: nets.Spec, params: nets.Params, batch: Batch | None, target) -> jax.Array:
        """How far the batch misses ``target``: the exact shortfall in value, the penalty's gradient."""

    @abc.abstractmethod
    def default_target(self) -> float:
        """The target a user gets without asking for one."""

    def check_target(self, target: float) -> float:
        """``target`` as a float; raises :class:`RequirementError` when it lies outside ``target_range``."""
        low, high = self.target_range
        if not (np.isfinite(target) and low <= target <= high):
            raise RequirementError(f"target {target} is outside {self.name}'s range [{low}, {high}]")
        return float(target)

    def complies(self, value: float, target: float) -> bool:
        return bool(value >= target) if self.higher_is_compliant else bool(value <= target)

    def check(self, spec: nets.Spec, dataset: Dataset) -> None:
        """Raises :class:`RequirementError` when the requirement cannot apply to ``spec`` on ``dataset``."""

    def baselines(self) -> dict[str, Baseline]:
        """The comparison methods, by name."""
        return {}

    def measure_result(self, spec: nets.Spec, result: BaselineResult, dataset: Dataset) -> np.ndarray:
        """[P] the metric of every network a baseline (or the editor) produced, on the test split."""
        batch = split_batch(dataset, "test")
        return np.asarray([self.measure(spec, jax.tree.map(lambda leaf, i=i: leaf[i], result.params), batch)
                           for i in range(nets.population_size(result.params))])


def jsd(logits_p: jax.Array, logits_q: jax.Array) -> jax.Array:
    """Mean Jensen-Shannon divergence (nats) between the softmax distributions of [n, C] logits."""
    log_p, log_q = jax.nn.log_softmax(logits_p), jax.nn.log_softmax(logits_q)
    log_m = jnp.logaddexp(log_p, log_q) - jnp.log(2.0)
    kl = lambda log_a: (jnp.exp(log_a) * (log_a - log_m)).sum(-1)  # noqa: E731
    return (0.5 * (kl(log_p) + kl(log_q))).mean()


def accuracy(spec: nets.Spec, params: nets.Params, x, y) -> jax.Array:
    """The fraction of x [n, ...] the network labels y [n] correctly."""
    return (nets.apply(spec, params, x).argmax(-1) == y).mean()


def straight_through(exact: jax.Array, smooth: jax.Array) -> jax.Array:
    """The value of ``exact`` with the gradient of ``smooth``.

    The editor's ``excess`` terms use it: their forward value is the exact hard metric on the batch
    (so a met target gives exactly 0 and an unmet one is not under-counted), and their gradient
    comes from a smooth surrogate of that metric.
    """
    return smooth + jax.lax.stop_gradient(exact - smooth)
