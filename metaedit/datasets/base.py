"""The data-set container, its errors, the shipped files' integrity check and the stratified split."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.resources
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pandas is imported where it is used: it costs 0.2 s, and a cached data set needs none
    import pandas as pd


class DatasetError(ValueError):
    """A data set could not be loaded as asked (unknown name or column, bad label, empty file)."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled data set with a train/test split and fairness metadata.

    x_train: [n_train, *input_shape] float32.  y_train: [n_train] int32 in [0, num_classes).
    s_train: [n_train] int32 in [0, G), the sensitive attribute's group of each row, or None where
    there is none; ``sensitive_groups`` names the G groups (a binary attribute has G = 2).
    The same for ``*_test``. For tabular data ``input_shape == (d,)``, ``feature_names`` has d
    entries and ``feature_groups`` holds, per raw attribute (``group_names``), its column indices.
    For image data ``feature_names``, ``group_names`` and ``feature_groups`` are empty.
    ``source`` records how to load it again: ``{"name": ..., **options}``.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    s_train: np.ndarray | None = None
    s_test: np.ndarray | None = None
    sensitive_name: str | None = None
    sensitive_groups: tuple[str, ...] = ()
    feature_names: tuple[str, ...] = ()
    group_names: tuple[str, ...] = ()
    feature_groups: tuple[tuple[int, ...], ...] = ()
    source: dict = dataclasses.field(default_factory=dict)

    @property
    def num_groups(self) -> int:
        """Groups of the sensitive attribute (0 where there is none)."""
        if self.s_train is None:
            return 0
        return len(self.sensitive_groups) or int(max(np.max(self.s_train), np.max(self.s_test))) + 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, without the batch axis."""
        return tuple(self.x_train.shape[1:])

    def __repr__(self) -> str:
        sensitive = f", sensitive={self.sensitive_name!r}" if self.sensitive_name else ""
        groups = f", groups={len(self.feature_groups)}" if self.feature_groups else ""
        return (
            f"Dataset({self.name!r}, train={len(self.y_train)}, test={len(self.y_test)}, "
            f"input_shape={self.input_shape}, classes={self.num_classes}{groups}{sensitive})"
        )


SHA256 = {  # the shipped files in metaedit/data
    "adult.data.gz": "0929e9d9c7845175493be1a8fd071b8e746a6b9f66d8bf359daabaac44713023",
    "adult.test.gz": "fcd5bcc9b18515fd2fd314e2bbd8444263ad0f2a0e638c060c34b0151555aaa2",
    "german.data.gz": "fb4b9063096409b19d03ae007ce2f195232a04f8ac4665112f78f312f962536a",
    "mnist_5k.csv.gz": "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d",
}


def sensitive_codes(train: pd.Series, test: pd.Series, sensitive: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Group ids of a sensitive column's rows in both splits, and the group names.

    ``sensitive`` is a column name (every value its own group, sorted: a multi-valued attribute)
    or ``column=value`` (one against the rest: 1 where the column equals ``value``, else 0).
    """
    column, _, value = sensitive.partition("=")
    train, test = train.astype(str).str.strip(), test.astype(str).str.strip()
    if value:
        levels = sorted(set(train) | set(test))
        if value not in levels:
            raise DatasetError(f"sensitive value {value!r} is not a value of {column!r}: {', '.join(levels)}")
        return ((train == value).to_numpy(np.int32), (test == value).to_numpy(np.int32),
                (f"{column}!={value}", f"{column}={value}"))
    levels = sorted(set(train) | set(test))
    if len(levels) < 2:
        raise DatasetError(f"sensitive column {column!r} holds a single value {levels[0]!r}: no groups to compare")
    index = {level: i for i, level in enumerate(levels)}
    return (train.map(index).to_numpy(np.int32), test.map(index).to_numpy(np.int32), tuple(levels))


def shipped_text(filename: str) -> str:
    """Decompressed text of a file in ``metaedit/data``, checked against its known sha256."""
    raw = importlib.resources.files("metaedit").joinpath("data", filename).read_bytes()
    if hashlib.sha256(raw).hexdigest() != SHA256[filename]:
        raise DatasetError(f"shipped data file metaedit/data/{filename} is damaged (sha256 mismatch)")
    return gzip.decompress(raw).decode("utf-8")


def stratified_split(n: int, y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test row indices of ``n`` rows, stratified by the labels ``y`` [n], drawn from ``seed``."""
    if not 0.0 < test_fraction < 1.0:
        raise DatasetError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    from sklearn.model_selection import train_test_split  # imported here: sklearn is slow to import

    return train_test_split(np.arange(n), test_size=test_fraction, random_state=seed, stratify=y)
