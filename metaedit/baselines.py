"""Baselines for the compliance edits, on the same held-out networks as the editor.

Registry ``BASELINES[requirement]`` maps names to functions
``baseline(spec, params [P, ...], dataset, target, **options) -> BaselineResult``; every network is
edited (vmapped where the method allows), and the wall time per network is reported.

* pruning: ``magnitude`` (global magnitude pruning of kernel weights to sparsity s) and
  ``magnitude+finetune`` (then AdamW on the training data with the pruning mask held fixed);
* minimisation: ``group_norm`` (zero the outgoing weights of all but the k feature groups with the
  largest first-layer norm), ``permutation`` (keep the k groups whose permutation most lowers the
  network's accuracy), each ``+finetune`` (mask held fixed), and ``retrain`` (a fresh network
  trained on the k groups the group norm keeps);
* fairness: ``threshold_optimizer`` (fairlearn's ``ThresholdOptimizer`` with equalised odds, a
  post-processing that needs the sensitive attribute at prediction time; it yields predictions, not
  a network), ``penalty_finetune`` (fine-tuning with a hinge on the soft equalised-odds gap as a
  penalty; its strength is the penalty weight) and ``penalty_retrain`` (a fresh network trained
  with that penalty).

The fourth argument of every baseline is its strength: the sparsity, the number of groups kept,
the penalty weight (the threshold optimiser ignores it).
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metaedit import nets, requirements
from metaedit.datasets import Dataset


class BaselineResult(NamedTuple):
    """params: edited stacked params (None for prediction-only methods); predictions: [P, n_test]
    hard test predictions; seconds_per_edit: wall time per network."""

    params: Any
    predictions: np.ndarray
    seconds_per_edit: float


def _kernel_names(spec):
    return [layer.name for layer in nets.layers(spec)]


def magnitude_masks(spec: nets.Spec, params: nets.Params, sparsity: float) -> nets.Params:
    """0/1 masks [P, ...] that keep each network's largest-magnitude kernel weights (globally across
    layers) so that a ``sparsity`` fraction is zero; biases are always kept."""
    names = _kernel_names(spec)

    def one(p):
        flat = jnp.concatenate([jnp.abs(p[n]["kernel"]).reshape(-1) for n in names])
        cut = int(np.ceil(sparsity * flat.size - 1e-9))  # at least the asked sparsity
        threshold = jnp.sort(flat)[cut - 1] if cut > 0 else -jnp.inf
        return {n: {"kernel": (jnp.abs(p[n]["kernel"]) > threshold).astype(p[n]["kernel"].dtype),
                    "bias": jnp.ones_like(p[n]["bias"])} for n in names}

    return jax.vmap(one)(params)


def group_masks(spec: nets.Spec, params: nets.Params, groups, keep: int) -> nets.Params:
    """0/1 masks [P, ...] zeroing the first-layer rows of all but the ``keep`` groups with the
    largest first-layer weight norm."""
    first = nets.layers(spec)[0].name

    def one(p):
        rows = p[first]["kernel"]
        norms = jnp.stack([jnp.sqrt((rows[jnp.asarray(g)] ** 2).sum()) for g in groups])
        return _keep_groups(spec, p, groups, jnp.argsort(-norms)[:keep])

    return jax.vmap(one)(params)


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


def permutation_masks(spec: nets.Spec, params: nets.Params, dataset: Dataset, keep: int, rows: int = 2048,
                      seed: int = 0) -> nets.Params:
    """Like :func:`group_masks`, ranking the groups by permutation importance: the accuracy a
    network loses on ``rows`` training rows when one group's columns are shuffled across rows
    (the same shuffle for every network)."""
    groups = dataset.feature_groups
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(dataset.y_train), size=min(rows, len(dataset.y_train)), replace=False)
    x, y = np.asarray(dataset.x_train[chosen]), jnp.asarray(dataset.y_train[chosen])
    shuffled = []
    for g in groups:
        copy = x.copy()
        copy[:, list(g)] = x[rng.permutation(len(x))][:, list(g)]
        shuffled.append(copy)
    shuffled = jnp.asarray(np.stack(shuffled))  # [G, rows, d]

    def one(p):
        base = (nets.apply(spec, p, jnp.asarray(x)).argmax(-1) == y).mean()
        permuted = jax.vmap(lambda xs: (nets.apply(spec, p, xs).argmax(-1) == y).mean())(shuffled)
        return _keep_groups(spec, p, groups, jnp.argsort(-(base - permuted))[:keep])

    return jax.jit(jax.vmap(one))(params)


def fresh(spec: nets.Spec, params: nets.Params, seed: int = 1) -> nets.Params:
    """Newly initialised networks, one per network in ``params`` [P, ...] (for retraining baselines)."""
    count = jax.tree.leaves(params)[0].shape[0]
    return jax.vmap(lambda k: nets.init(spec, k))(jax.random.split(jax.random.key(seed), count))


def finetune(spec: nets.Spec, params: nets.Params, masks: nets.Params, dataset: Dataset, steps: int = 200,
             learning_rate: float = 1e-3, batch: int = 128, penalty: Callable | None = None, weight: float = 1.0,
             penalty_rows: int | None = None, seed: int = 0) -> nets.Params:
    """AdamW fine-tuning of every network (vmapped) with ``masks`` held fixed, optionally adding
    ``weight * penalty(spec, params, batch)``, measured on the minibatch or, with ``penalty_rows``,
    on a fixed random subset of that many training rows. Returns the masked, fine-tuned params."""
    x, y = jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)
    s = jnp.asarray(dataset.s_train) if dataset.s_train is not None else jnp.zeros_like(y)
    tx = optax.adamw(learning_rate)
    if penalty_rows is not None:
        subset = np.random.default_rng(seed).permutation(len(dataset.y_train))[:penalty_rows]
        fixed = requirements.Batch(x[subset], y[subset], s[subset])

    def one(p, m, key):
        p = jax.tree.map(jnp.multiply, p, m)

        def loss(q, rows):
            q = jax.tree.map(jnp.multiply, q, m)
            value = optax.softmax_cross_entropy_with_integer_labels(nets.apply(spec, q, x[rows]), y[rows]).mean()
            if penalty is not None:
                on = fixed if penalty_rows is not None else requirements.Batch(x[rows], y[rows], s[rows])
                value = value + weight * penalty(spec, q, on)
            return value

        def step(carry, k):
            q, state = carry
            grads = jax.grad(loss)(q, jax.random.randint(k, (batch,), 0, y.shape[0]))
            updates, state = tx.update(grads, state, q)
            return (optax.apply_updates(q, updates), state), None

        (p, _), _ = jax.lax.scan(step, (p, tx.init(p)), jax.random.split(key, steps))
        return jax.tree.map(jnp.multiply, p, m)

    count = jax.tree.leaves(params)[0].shape[0]
    return jax.jit(jax.vmap(one))(params, masks, jax.random.split(jax.random.key(seed), count))


def _predict(spec, params, dataset) -> np.ndarray:
    x = jnp.asarray(dataset.x_test)
    return np.asarray(jax.jit(jax.vmap(lambda p: nets.apply(spec, p, x).argmax(-1)))(params))


def _timed(spec, params, dataset, make: Callable[[], nets.Params]) -> BaselineResult:
    count = jax.tree.leaves(params)[0].shape[0]
    make()  # compile
    started = time.perf_counter()
    edited = jax.block_until_ready(make())
    return BaselineResult(edited, _predict(spec, edited, dataset), (time.perf_counter() - started) / count)


def _masked(spec, params, dataset, make_masks: Callable[[], nets.Params], finetune_steps: int) -> BaselineResult:
    """The networks under ``make_masks()``, fine-tuned with the masks held fixed when asked; timed."""
    def make():
        masks = make_masks()
        if finetune_steps:
            return finetune(spec, params, masks, dataset, finetune_steps)
        return jax.tree.map(jnp.multiply, params, masks)
    return _timed(spec, params, dataset, make)


def magnitude(spec, params, dataset, sparsity, finetune_steps: int = 0) -> BaselineResult:
    return _masked(spec, params, dataset, lambda: magnitude_masks(spec, params, sparsity), finetune_steps)


def group_norm(spec, params, dataset, keep, finetune_steps: int = 0) -> BaselineResult:
    return _masked(spec, params, dataset, lambda: group_masks(spec, params, dataset.feature_groups, int(keep)),
                   finetune_steps)


def permutation(spec, params, dataset, keep, finetune_steps: int = 0) -> BaselineResult:
    return _masked(spec, params, dataset, lambda: permutation_masks(spec, params, dataset, int(keep)), finetune_steps)


def retrain_on_groups(spec, params, dataset, keep, steps: int = 1000) -> BaselineResult:
    """A fresh network per network, trained with only the ``keep`` groups its group norm ranks first."""
    def make():
        masks = group_masks(spec, params, dataset.feature_groups, int(keep))
        return finetune(spec, fresh(spec, params), masks, dataset, steps)
    return _timed(spec, params, dataset, make)


def penalty_retrain(spec, params, dataset, weight: float = 5.0, steps: int = 1000, epsilon: float = 0.05,
                    margin: float = 0.02) -> BaselineResult:
    """A fresh network per network, trained with the penalty of :func:`penalty_finetune`."""
    return penalty_finetune(spec, params, dataset, weight, steps, epsilon, margin, start=fresh(spec, params))


def penalty_finetune(spec, params, dataset, weight: float = 5.0, steps: int = 200, epsilon: float = 0.05,
                     margin: float = 0.02, start: nets.Params | None = None, penalty_rows: int = 8192) -> BaselineResult:
    """Fine-tuning with ``weight * relu(soft equalised-odds gap - (epsilon - margin))`` added to the
    cross-entropy of a minibatch, the gap measured on a fixed subset of ``penalty_rows`` training
    rows (on a 128-row batch the smallest cell has a handful of rows, and the noisy gap drove the
    networks to a constant prediction). ``start`` replaces the networks trained from (default: ``params``)."""
    ones = jax.tree.map(jnp.ones_like, params)
    hinge = lambda spec, p, rows: jax.nn.relu(requirements.soft_equalised_odds(spec, p, rows) - (epsilon - margin))  # noqa: E731
    return _timed(spec, params, dataset, lambda: finetune(
        spec, params if start is None else start, ones, dataset, steps, penalty=hinge, weight=weight,
        penalty_rows=penalty_rows))


def threshold_optimizer(spec, params, dataset, epsilon=None) -> BaselineResult:
    """fairlearn's ``ThresholdOptimizer(constraints="equalized_odds")`` fitted per network on the
    training split on the network's positive-class probability; test predictions use the sensitive
    attribute. ``epsilon`` is unused: the method aims at a zero gap."""
    from fairlearn.postprocessing import ThresholdOptimizer
    from sklearn.base import BaseEstimator

    class _Scores(BaseEstimator):
        """A fitted scikit-learn estimator whose ``predict`` is the network's positive-class probability."""

        def __init__(self, p=None):
            self.p = p
            self.classes_ = np.array([0, 1])

        def fit(self, x, y):
            return self

        def predict(self, x):
            probability = jax.nn.softmax(nets.apply(spec, self.p, jnp.asarray(x, jnp.float32)))[:, 1]
            return np.asarray(probability, np.float64)  # float64: pandas 3 refuses a lossy write into float32

    count = jax.tree.leaves(params)[0].shape[0]
    predictions = []
    started = time.perf_counter()
    for i in range(count):
        member = jax.tree.map(lambda leaf: leaf[i], params)
        post = ThresholdOptimizer(estimator=_Scores(member), constraints="equalized_odds", prefit=True,
                                  predict_method="predict")
        post.fit(dataset.x_train, dataset.y_train, sensitive_features=dataset.s_train)
        predictions.append(post.predict(dataset.x_test, sensitive_features=dataset.s_test, random_state=i))
    return BaselineResult(None, np.asarray(predictions), (time.perf_counter() - started) / count)


BASELINES: dict[str, dict[str, Callable[..., BaselineResult]]] = {
    "pruning": {
        "magnitude": magnitude,
        "magnitude+finetune": functools.partial(magnitude, finetune_steps=200),
    },
    "minimisation": {
        "group_norm": group_norm,
        "group_norm+finetune": functools.partial(group_norm, finetune_steps=200),
        "permutation": permutation,
        "permutation+finetune": functools.partial(permutation, finetune_steps=200),
        "retrain": retrain_on_groups,
    },
    "fairness": {
        "threshold_optimizer": threshold_optimizer,
        "penalty_finetune": penalty_finetune,
        "penalty_retrain": penalty_retrain,
    },
}
