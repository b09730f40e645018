"""Encoding of tabular data: one-hot categorical columns, standardised numeric columns, feature groups.

A *feature group* is the set of encoded columns that come from one raw attribute (all one-hot columns
of a categorical attribute, or the single column of a numeric one). Data minimisation removes whole
groups, never single one-hot columns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Sequence

import numpy as np

if TYPE_CHECKING:  # pandas is imported where it is used: it costs 0.2 s, and a cached data set needs none
    import pandas as pd


class EncodedTable(NamedTuple):
    """Encoded features of a train/test pair of tables.

    x_train: [n_train, d] float32; x_test: [n_test, d] float32.
    feature_names: d column names (``attr=value`` for one-hot columns).
    group_names: g raw attribute names, in column order.
    feature_groups: g tuples of column indices into the d columns.
    """

    x_train: np.ndarray
    x_test: np.ndarray
    feature_names: tuple[str, ...]
    group_names: tuple[str, ...]
    feature_groups: tuple[tuple[int, ...], ...]


def encode_tables(
    train: pd.DataFrame,
    test: pd.DataFrame,
    columns: Sequence[str],
    categorical: Sequence[str],
) -> EncodedTable:
    """One-hot encodes ``categorical`` columns and standardises the others with train statistics.

    Categories are the sorted values seen in ``train``; a test value never seen in training encodes
    as all zeros. Numeric columns get ``(v - mean_train) / std_train`` (std 0 counts as 1).
    Columns keep the order of ``columns``.
    """
    categorical = set(categorical)
    blocks_train, blocks_test = [], []
    feature_names: list[str] = []
    group_names: list[str] = []
    feature_groups: list[tuple[int, ...]] = []
    for column in columns:
        start = len(feature_names)
        if column in categorical:
            levels = sorted(train[column].astype(str).unique())
            blocks_train.append(_one_hot(train[column], levels))
            blocks_test.append(_one_hot(test[column], levels))
            feature_names.extend(f"{column}={level}" for level in levels)
        else:
            values_train = train[column].to_numpy(dtype=np.float64)
            values_test = test[column].to_numpy(dtype=np.float64)
            mean, std = values_train.mean(), values_train.std()
            std = std if std > 0 else 1.0
            blocks_train.append(((values_train - mean) / std)[:, None])
            blocks_test.append(((values_test - mean) / std)[:, None])
            feature_names.append(column)
        group_names.append(column)
        feature_groups.append(tuple(range(start, len(feature_names))))
    return EncodedTable(
        x_train=np.concatenate(blocks_train, axis=1).astype(np.float32),
        x_test=np.concatenate(blocks_test, axis=1).astype(np.float32),
        feature_names=tuple(feature_names),
        group_names=tuple(group_names),
        feature_groups=tuple(feature_groups),
    )


def _one_hot(values: pd.Series, levels: Sequence[str]) -> np.ndarray:
    """[n, len(levels)] 0/1 matrix; values outside ``levels`` give a zero row."""
    index = {level: i for i, level in enumerate(levels)}
    codes = values.astype(str).map(index).to_numpy(dtype=np.float64, na_value=-1)
    out = np.zeros((len(values), len(levels)), dtype=np.float64)
    rows = np.flatnonzero(codes >= 0)
    out[rows, codes[rows].astype(np.int64)] = 1.0
    return out
