"""Data-aware node features: statistics of one forward pass of a network on a fixed probe batch.

A requirement such as equalised odds is a property of the network *and* the data, which weights
alone only hint at. :func:`node_features` runs the network once on a probe batch (a few hundred
rows of the training split, drawn by :func:`probe_rows`) and gives every node of its graph
(:mod:`metaedit.graphs`: inputs, hidden neurons or channels, outputs, in that order) a vector of
:data:`NUM_FEATURES` statistics of its activation ``a`` (the input value, the post-ReLU activation,
the logit; a CNN's spatially averaged channel):

0. mean of ``a``;  1. its standard deviation;  2. the fraction of rows where ``a > 0``;
3. mean over rows with label 1 minus mean over rows with label 0 (binary tasks);
4. and 5. for each label y, mean over the *favoured* group minus mean over the *disfavoured* group
   (the groups of the sensitive attribute with the highest and the lowest predicted positive rate);
6. the mean sensitivity of the margin to the node, ``d margin / d a`` (a channel: to a shift of
   its whole map), where the margin is the true class's logit minus the mean logit;
7. that sensitivity's mean over the favoured group minus its mean over the disfavoured group.

Features 6 and 7 tell an editor how a change at a node moves the output, and for whom: what a
group-specific shift of the decision needs.

Means and differences pass through ``sign(v) log(1 + |v|)``. Features that a data set cannot give
(no sensitive attribute, more than two classes) are 0. The statistics permute with their neurons,
so an editor that reads them stays equivariant to hidden-neuron permutations.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from metaedit import nets
from metaedit.baselines import split_batch
from metaedit.datasets import Dataset
from metaedit.requirements import equalised_odds_gaps
from metaedit.training import Batch

NUM_FEATURES = 8
NUM_GRAPH_FEATURES = 6


def _signed_log(v: jax.Array) -> jax.Array:
    return jnp.sign(v) * jnp.log1p(jnp.abs(v))


def _forward(spec: nets.Spec, params: nets.Params, x: jax.Array, shifts: list[jax.Array]):
    """``(acts [B, N], logits [B, C])`` with ``shifts[i]`` [B, width_i] added to the activations of
    graph position i (for a CNN, to every position of the channel's map)."""
    all_layers = nets.layers(spec)
    if isinstance(spec, nets.MLPSpec):
        h = x.reshape(x.shape[0], -1) + shifts[0]
        acts = [h]
        for i, layer in enumerate(all_layers):
            h = h @ params[layer.name]["kernel"] + params[layer.name]["bias"]
            if i < len(all_layers) - 1:
                h = jax.nn.relu(h)
            h = h + shifts[i + 1]
            acts.append(h)
        return jnp.concatenate(acts, axis=1), h
    axes = tuple(range(1, 1 + spec.spatial_rank))
    expand = lambda s: s.reshape(s.shape[:1] + (1,) * spec.spatial_rank + s.shape[1:])  # noqa: E731
    h = x + expand(shifts[0])
    acts = [h.mean(axes)]
    for i, layer in enumerate(all_layers[:-1]):
        h = jax.nn.relu(nets.linear_map(layer)(h, params[layer.name]["kernel"]) + params[layer.name]["bias"]) + expand(shifts[i + 1])
        acts.append(h.mean(axes))
    head = params[all_layers[-1].name]
    logits = h.mean(axes) @ head["kernel"] + head["bias"] + shifts[-1]
    return jnp.concatenate(acts + [logits], axis=1), logits


def _widths(spec: nets.Spec) -> list[int]:
    all_layers = nets.layers(spec)
    return [all_layers[0].kernel_shape[-2]] + [layer.kernel_shape[-1] for layer in all_layers]


def activations(spec: nets.Spec, params: nets.Params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(acts [B, N], logits [B, C])``: every graph node's activation on x [B, ...], in graph order."""
    return _forward(spec, params, x, [jnp.zeros((x.shape[0], w), x.dtype) for w in _widths(spec)])


def sensitivities(spec: nets.Spec, params: nets.Params, x: jax.Array, y: jax.Array) -> jax.Array:
    """[B, N] ``d margin / d a`` of every node for every row; margin: the true logit minus the mean logit."""
    def margin(shifts):
        _, logits = _forward(spec, params, x, shifts)
        return (jnp.take_along_axis(logits, y[:, None], 1)[:, 0] - logits.mean(-1)).sum()

    grads = jax.grad(margin)([jnp.zeros((x.shape[0], w), x.dtype) for w in _widths(spec)])
    return jnp.concatenate(grads, axis=1)


def node_features(spec: nets.Spec, params: nets.Params, probe: Batch, num_groups: int) -> jax.Array:
    """[N, NUM_FEATURES] statistics of every node on the probe batch (see the module docstring).

    ``probe.s`` holds group ids in ``[0, num_groups)``; ``num_groups`` 0 means no sensitive attribute.
    """
    acts, logits = activations(spec, params, probe.x)
    slopes = sensitivities(spec, params, probe.x, probe.y)
    mean, std = acts.mean(0), acts.std(0)
    active = (acts > 0).mean(0)
    zeros = jnp.zeros_like(mean)
    if spec.num_classes != 2:
        return jnp.stack([_signed_log(mean), _signed_log(std), active, zeros, zeros, zeros,
                          _signed_log(slopes.mean(0)), zeros], axis=1)
    y = probe.y.astype(acts.dtype)
    per_label = [((acts * w[:, None]).sum(0) / jnp.maximum(w.sum(), 1.0)) for w in (1.0 - y, y)]
    label = per_label[1] - per_label[0]
    gaps, slope_gap = [zeros, zeros], zeros
    if num_groups >= 2:
        groups = jax.nn.one_hot(probe.s, num_groups, dtype=acts.dtype)  # [B, G]
        positive = jax.nn.softmax(logits)[:, 1]
        rate = (groups * positive[:, None]).sum(0) / jnp.maximum(groups.sum(0), 1.0)
        present = groups.sum(0) > 0
        favoured = jnp.argmax(jnp.where(present, rate, -jnp.inf))
        disfavoured = jnp.argmin(jnp.where(present, rate, jnp.inf))
        gaps = []
        for w in (1.0 - y, y):
            cell = groups * w[:, None]  # [B, G]
            means = (cell.T @ acts) / jnp.maximum(cell.sum(0), 1.0)[:, None]  # [G, N]
            gaps.append(means[favoured] - means[disfavoured])
        slope_means = (groups.T @ slopes) / jnp.maximum(groups.sum(0), 1.0)[:, None]  # [G, N]
        slope_gap = slope_means[favoured] - slope_means[disfavoured]
    return jnp.stack([_signed_log(mean), _signed_log(std), active, _signed_log(label),
                      _signed_log(gaps[0]), _signed_log(gaps[1]), _signed_log(slopes.mean(0)),
                      _signed_log(slope_gap)], axis=1)


def graph_features(spec: nets.Spec, params: nets.Params, probe: Batch, num_groups: int) -> jax.Array:
    """[NUM_GRAPH_FEATURES] statistics of the whole network on the probe batch: for each label y, the
    spread over groups (max minus min) of the positive rate among rows of label y, with soft (mean
    probability) and hard predictions (features 0 to 3: how far the network is from equalised
    odds); the positive rate (4) and the accuracy (5). Zeros where the task is not binary or
    there are no groups (the rates and accuracy still given where binary)."""
    logits = nets.apply(spec, params, probe.x)
    accuracy = (logits.argmax(-1) == probe.y).mean()
    zeros = jnp.zeros(NUM_GRAPH_FEATURES, logits.dtype)
    if spec.num_classes != 2:
        return zeros.at[5].set(accuracy)
    soft = jax.nn.softmax(logits)[:, 1]
    hard = (logits.argmax(-1) == 1).astype(soft.dtype)
    if num_groups >= 2:
        spreads = jnp.concatenate([equalised_odds_gaps(probe.y, score, probe.s, num_groups) for score in (soft, hard)])
    else:
        spreads = jnp.zeros(4, soft.dtype)
    return jnp.concatenate([spreads, jnp.stack([soft.mean(), accuracy])])


def probe_rows(y: np.ndarray, s: np.ndarray | None, size: int, seed: int = 0) -> np.ndarray:
    """``size`` training rows, stratified over the (sensitive group, label) cells (round robin, so a
    small cell is not left out), drawn from ``seed``."""
    rng = np.random.default_rng([seed, 11])
    cells = np.asarray(y, np.int64) if s is None else np.asarray(s, np.int64) * (int(np.max(y)) + 1) + np.asarray(y)
    order = [rng.permutation(np.flatnonzero(cells == c)) for c in np.unique(cells)]
    picked, depth = [], 0
    while len(picked) < size and any(depth < len(o) for o in order):
        picked += [int(o[depth]) for o in order if depth < len(o)]
        depth += 1
    return np.sort(np.asarray(picked[:size], np.int64))


def cell_shares(y: np.ndarray, s: np.ndarray, groups: int, labels: int) -> np.ndarray:
    """[groups, labels] each (sensitive group, label) cell's share of the rows ``y``, ``s`` [n]."""
    cells = np.asarray(s, np.int64) * labels + np.asarray(y, np.int64)
    return (np.bincount(cells, minlength=groups * labels) / len(cells)).reshape(groups, labels)


def stratified_batch(dataset: Dataset, size: int, seed: int) -> Batch:
    """``size`` training rows stratified over the (group, label) cells (:func:`probe_rows`), as a
    device :class:`Batch`: the probe batch, the rows a gap is measured on in training, the
    calibration's validation rows."""
    rows = probe_rows(dataset.y_train, dataset.s_train, size, seed)
    return jax.tree.map(lambda a: a[rows], split_batch(dataset, "train"))
