"""Task sequences for continual learning, their evaluation, and accuracy-matrix summaries.

:func:`split` cuts a labelled data set (digits, MNIST-5k, MNIST-1D, ...) into tasks of a few classes
each, in one of three scenarios (van de Ven & Tolias, 2019):

* ``"domain"`` (domain-incremental): one shared head of ``k`` outputs, ``k`` classes per task; a
  task's labels are the positions of its classes in its tuple (pair ``(2, 3)`` -> 0, 1). All tasks
  must have the same number of classes. Masks are all ones.
* ``"class"`` (class-incremental): one head over all ``dataset.num_classes`` classes, labels are the
  original class ids, the network must also tell tasks apart. Masks are all ones.
* ``"task"`` (task-incremental, multi-head): the same all-class head and original labels as
  ``"class"``, but every task sees only its own classes: ``output_mask[t]`` is one on task t's
  classes, and both training and evaluation set the other logits to a large negative number
  (:func:`metaedit.training.masked_logits`). This
  is a multi-head network whose heads are disjoint slices of one output layer.

Accuracy matrices follow the usual convention: ``R[i, j]`` is the accuracy on task j's test split
after training task i (``[T, T]``, or with leading axes such as seeds ``[S, T, T]``).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from metaedit import nets
from metaedit.datasets import Dataset
from metaedit.training import masked_logits

SCENARIOS = ("task", "domain", "class")
DEFAULT_PAIRS = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))


class ContinualError(ValueError):
    """A task sequence, or an evaluation on it, is not well formed (the message names the problem)."""


@dataclasses.dataclass(frozen=True, eq=False)
class TaskSequence:
    """T tasks cut from one data set.

    x_train[t]: [n_t, *input_shape] float32; y_train[t]: [n_t] int32 in [0, num_outputs) (the
    scenario's label for each sample, see the module docstring); the same for ``x_test``/``y_test``.
    classes[t]: task t's original class ids. output_mask: [T, num_outputs] bool, the logits that
    take part in task t's training and evaluation (all True except for ``"task"``).
    """

    name: str
    scenario: str
    classes: tuple[tuple[int, ...], ...]
    x_train: tuple[np.ndarray, ...]
    y_train: tuple[np.ndarray, ...]
    x_test: tuple[np.ndarray, ...]
    y_test: tuple[np.ndarray, ...]
    num_outputs: int
    output_mask: np.ndarray

    @property
    def num_tasks(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, without the batch axis."""
        return tuple(self.x_train[0].shape[1:])

    def __repr__(self) -> str:
        sizes = ", ".join(
            f"{c}: {len(y)}/{len(yt)}" for c, y, yt in zip(self.classes, self.y_train, self.y_test)
        )
        return (
            f"TaskSequence({self.name!r}, scenario={self.scenario!r}, outputs={self.num_outputs}, "
            f"tasks [classes: train/test] = {sizes})"
        )


def split(
    dataset: Dataset,
    scenario: str,
    pairs: Sequence[Sequence[int]] = DEFAULT_PAIRS,
    max_train: int | None = None,
    seed: int = 0,
) -> TaskSequence:
    """Cuts ``dataset`` into one task per entry of ``pairs`` (each a tuple of >= 2 class ids).

    ``max_train`` (optional) keeps at most that many training samples per task, drawn from
    ``seed`` and balanced over the task's classes; test splits are kept whole. Raises
    :class:`ContinualError` for an unknown scenario, no tasks, a task with fewer than two distinct
    classes or a repeated class, a class id out of range or absent from the data, tasks of unequal
    size in the domain-incremental scenario, and a ``max_train`` below a task's class count.
    """
    if scenario not in SCENARIOS:
        raise ContinualError(f"unknown scenario {scenario!r}; use one of {', '.join(SCENARIOS)}")
    tasks = _check_tasks(dataset, pairs)
    if scenario == "domain" and len({len(c) for c in tasks}) != 1:
        raise ContinualError(
            f"domain-incremental tasks share one head, so they need the same number of classes; got {tasks}"
        )
    widest = max(map(len, tasks))
    if max_train is not None and (not isinstance(max_train, (int, np.integer)) or max_train < widest):
        raise ContinualError(
            f"max_train must be an integer of at least the classes per task ({widest}), got {max_train!r}"
        )
    rng = np.random.default_rng(seed)
    num_outputs = len(tasks[0]) if scenario == "domain" else dataset.num_classes
    parts = {"x_train": [], "y_train": [], "x_test": [], "y_test": []}
    for classes in tasks:
        train_rows = np.flatnonzero(np.isin(dataset.y_train, classes))
        if max_train is not None and len(train_rows) > max_train:
            train_rows = _balanced_subset(train_rows, dataset.y_train[train_rows], max_train, rng)
        test_rows = np.flatnonzero(np.isin(dataset.y_test, classes))
        for part, x, y, rows in (("train", dataset.x_train, dataset.y_train, train_rows),
                                 ("test", dataset.x_test, dataset.y_test, test_rows)):
            parts[f"x_{part}"].append(np.asarray(x[rows], np.float32))
            parts[f"y_{part}"].append(_labels(y[rows], classes, scenario))
    mask = np.ones((len(tasks), num_outputs), bool)
    if scenario == "task":
        mask[:] = False
        for t, classes in enumerate(tasks):
            mask[t, list(classes)] = True
    return TaskSequence(
        name=dataset.name, scenario=scenario, classes=tasks, num_outputs=num_outputs, output_mask=mask,
        **{key: tuple(value) for key, value in parts.items()},
    )


def _check_tasks(dataset: Dataset, pairs) -> tuple[tuple[int, ...], ...]:
    try:
        tasks = tuple(tuple(int(c) for c in task) for task in pairs)
    except (TypeError, ValueError):
        raise ContinualError(f"pairs must be a sequence of tuples of class ids, got {pairs!r}") from None
    if not tasks:
        raise ContinualError("pairs is empty: a task sequence needs at least one task")
    for t, classes in enumerate(tasks):
        if len(set(classes)) < 2:
            raise ContinualError(f"task {t} has fewer than two distinct classes: {classes}")
        if len(set(classes)) != len(classes):
            raise ContinualError(f"task {t} repeats a class: {classes}")
        for c in classes:
            if not 0 <= c < dataset.num_classes:
                raise ContinualError(
                    f"class {c} of task {t} is out of range for {dataset.name!r} "
                    f"(classes 0..{dataset.num_classes - 1})"
                )
            for part, y in (("training", dataset.y_train), ("test", dataset.y_test)):
                if not np.any(y == c):
                    raise ContinualError(f"class {c} of task {t} has no {part} samples in {dataset.name!r}")
    return tasks


def _balanced_subset(rows: np.ndarray, y: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` of ``rows``, round-robin over the classes in ``y`` in a random order within each."""
    rank = np.empty(len(rows))
    for c in np.unique(y):
        where = np.flatnonzero(y == c)
        rank[where] = rng.permutation(len(where))
    order = np.lexsort((rng.random(len(rows)), rank))
    return np.sort(rows[order[:size]])


def _labels(y: np.ndarray, classes: tuple[int, ...], scenario: str) -> np.ndarray:
    """Scenario labels [n] int32: a class's position in ``classes`` (domain) or the class id."""
    if scenario == "domain":
        lookup = np.zeros(max(classes) + 1, np.int32)
        lookup[list(classes)] = np.arange(len(classes))
        return lookup[y]
    return y.astype(np.int32)


# --------------------------------------------------------------------------- evaluation


def stacked(sequence: TaskSequence, part: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One split of every task, zero-padded to the longest: x [T, N, *input_shape] float32,
    y [T, N] int32, valid [T, N] bool (False on padding). ``part`` is "train" or "test"."""
    if part not in ("train", "test"):
        raise ContinualError(f"part must be 'train' or 'test', got {part!r}")
    xs, ys = getattr(sequence, f"x_{part}"), getattr(sequence, f"y_{part}")
    n = max(len(y) for y in ys)
    x = np.zeros((len(xs), n) + sequence.input_shape, np.float32)
    y = np.zeros((len(ys), n), np.int32)
    valid = np.zeros((len(ys), n), bool)
    for t, (xt, yt) in enumerate(zip(xs, ys)):
        x[t, : len(yt)], y[t, : len(yt)], valid[t, : len(yt)] = xt, yt, True
    return x, y, valid


def task_correct(spec: nets.Spec, params: nets.Params, x, y, valid, mask) -> jax.Array:
    """Correct predictions [T] int32 of one network on padded task data (x [T, N, ...], y and valid
    [T, N], mask [T, C]); padding rows (``valid`` False) do not count. Traceable (jit/vmap)."""
    t, n = y.shape
    logits = nets.apply(spec, params, x.reshape((t * n,) + x.shape[2:])).reshape(t, n, -1)
    correct = (masked_logits(logits, mask[:, None, :]).argmax(-1) == y) & valid
    return correct.sum(1, dtype=jnp.int32)


def check_network(spec: nets.Spec, sequence: TaskSequence) -> None:
    """Raises :class:`ContinualError` if ``spec`` does not take the sequence's inputs or outputs."""
    nets.check_fits(spec, sequence.input_shape, sequence.num_outputs,
                    f"the {sequence.scenario}-incremental sequence", ContinualError)


def evaluate(spec: nets.Spec, params: nets.Params, sequence: TaskSequence) -> np.ndarray:
    """Test accuracy [T] (float64) of one network on every task, under the sequence's scenario."""
    check_network(spec, sequence)
    x, y, valid = stacked(sequence, "test")
    correct = _correct_jit(spec, params, x, y, valid, sequence.output_mask)
    return np.asarray(correct) / valid.sum(1)


_correct_jit = jax.jit(task_correct, static_argnums=0)


# --------------------------------------------------------------------------- accuracy matrices


def _check_matrix(matrix) -> np.ndarray:
    matrix = np.asarray(matrix, np.float64)
    if matrix.ndim < 2 or matrix.shape[-1] != matrix.shape[-2] or matrix.shape[-1] == 0:
        raise ContinualError(f"an accuracy matrix must be [..., T, T] with T >= 1, got shape {matrix.shape}")
    return matrix


def average_accuracy(matrix) -> np.ndarray:
    """Mean accuracy over all tasks after the last one: ``R[..., T-1, :].mean(-1)``; shape ``[...]``."""
    return _check_matrix(matrix)[..., -1, :].mean(-1)


def forgetting(matrix) -> np.ndarray:
    """Mean over old tasks j < T-1 of ``max_{j <= i < T-1} R[i, j] - R[T-1, j]``; shape ``[...]``.

    (Chaudhry et al., 2018.) Needs at least two tasks.
    """
    matrix = _check_matrix(matrix)
    t = matrix.shape[-1]
    if t < 2:
        raise ContinualError("forgetting needs an accuracy matrix of at least two tasks")
    drops = [matrix[..., j:t - 1, j].max(-1) - matrix[..., t - 1, j] for j in range(t - 1)]
    return np.mean(np.stack(drops, -1), -1)
