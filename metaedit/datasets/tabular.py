"""Tabular data sets: UCI Adult, German credit, scikit-learn's breast cancer, and a user's CSV.

Each comes with a sensitive attribute (where it has one: binary, multi-valued, or one group
against the rest, see :func:`metaedit.datasets.base.sensitive_codes`) and *feature groups*: the encoded
columns of each raw attribute (:mod:`metaedit.datasets.encoding`).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from metaedit.datasets.base import Dataset, DatasetError, sensitive_codes, shipped_text, stratified_split
from metaedit.datasets.encoding import encode_tables

if TYPE_CHECKING:  # pandas is imported where it is used: it costs 0.2 s, and a cached data set needs none
    import pandas as pd


_ADULT_COLUMNS = (
    "age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
    "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country",
)
_ADULT_CATEGORICAL = (
    "workclass", "education", "marital-status", "occupation", "relationship", "race", "sex",
    "native-country",
)


def load_adult(sensitive: str = "sex") -> Dataset:
    """UCI Adult with its official train/test split (rows with a missing value dropped).

    14 raw attributes -> 14 feature groups, 104 encoded columns (8 categorical attributes one-hot,
    6 numeric standardised; capital-gain and capital-loss pass through log1p first).
    Label: income > 50K. ``sensitive``: ``"sex"`` (Female 0, Male 1), ``"race"`` (five groups:
    Amer-Indian-Eskimo, Asian-Pac-Islander, Black, Other, White), or one group against the rest,
    e.g. ``"race=Black"``.
    Shapes: x_train [30162, 104], x_test [15060, 104].
    """
    import pandas as pd

    if sensitive.partition("=")[0] not in ("sex", "race"):
        raise DatasetError(f"adult: sensitive must be sex or race (or race=VALUE), got {sensitive!r}")
    names = list(_ADULT_COLUMNS) + ["income"]
    tables = []
    for filename, skip in (("adult.data.gz", 0), ("adult.test.gz", 1)):
        table = pd.read_csv(
            io.StringIO(shipped_text(filename)), header=None, names=names, skiprows=skip,
            skipinitialspace=True, na_values="?",
        ).dropna()
        table["income"] = table["income"].str.rstrip(".")
        for column in ("capital-gain", "capital-loss"):
            table[column] = np.log1p(table[column].astype(np.float64))
        tables.append(table.reset_index(drop=True))
    train, test = tables
    encoded = encode_tables(train, test, _ADULT_COLUMNS, _ADULT_CATEGORICAL)
    s_train, s_test, groups = sensitive_codes(train[sensitive.partition("=")[0]], test[sensitive.partition("=")[0]],
                                              sensitive)
    return Dataset(
        name="adult",
        x_train=encoded.x_train,
        y_train=(train["income"] == ">50K").to_numpy(np.int32),
        x_test=encoded.x_test,
        y_test=(test["income"] == ">50K").to_numpy(np.int32),
        num_classes=2,
        s_train=s_train,
        s_test=s_test,
        sensitive_name=sensitive,
        sensitive_groups=groups,
        feature_names=encoded.feature_names,
        group_names=encoded.group_names,
        feature_groups=encoded.feature_groups,
        source={"name": "adult", "sensitive": sensitive},
    )


_GERMAN_COLUMNS = (
    "checking-account", "duration", "credit-history", "purpose", "credit-amount", "savings",
    "employment-since", "installment-rate", "personal-status-sex", "other-debtors",
    "residence-since", "property", "age", "other-installment-plans", "housing",
    "existing-credits", "job", "people-liable", "telephone", "foreign-worker",
)
_GERMAN_NUMERIC = (
    "duration", "credit-amount", "installment-rate", "residence-since", "age", "existing-credits",
    "people-liable",
)


def load_german(sensitive: str = "sex", test_fraction: float = 0.3, seed: int = 0) -> Dataset:
    """UCI Statlog German credit (symbolic form), 1,000 rows split stratified by ``seed``.

    20 raw attributes -> 20 feature groups, 61 encoded columns. Label: 1 = good credit.
    ``sensitive``: ``"sex"`` from attribute 9 (A92, A95 female -> 0; A91, A93, A94 male -> 1) or
    ``"age"`` (1 = older than 25).
    """
    import pandas as pd

    if sensitive not in ("sex", "age"):
        raise DatasetError(f"german: sensitive must be 'sex' or 'age', got {sensitive!r}")
    table = pd.read_csv(
        io.StringIO(shipped_text("german.data.gz")), sep=" ", header=None,
        names=list(_GERMAN_COLUMNS) + ["credit"],
    )
    y = (table["credit"] == 1).to_numpy(np.int32)
    if sensitive == "sex":
        s = (~table["personal-status-sex"].isin(["A92", "A95"])).to_numpy(np.int32)
    else:
        s = (table["age"] > 25).to_numpy(np.int32)
    train_idx, test_idx = stratified_split(len(table), y, test_fraction, seed)
    categorical = [c for c in _GERMAN_COLUMNS if c not in _GERMAN_NUMERIC]
    encoded = encode_tables(table.iloc[train_idx], table.iloc[test_idx], _GERMAN_COLUMNS, categorical)
    return Dataset(
        name="german",
        x_train=encoded.x_train, y_train=y[train_idx],
        x_test=encoded.x_test, y_test=y[test_idx],
        num_classes=2,
        s_train=s[train_idx], s_test=s[test_idx], sensitive_name=sensitive,
        sensitive_groups=("female", "male") if sensitive == "sex" else ("25 or younger", "older than 25"),
        feature_names=encoded.feature_names, group_names=encoded.group_names,
        feature_groups=encoded.feature_groups,
        source={"name": "german", "sensitive": sensitive, "test_fraction": test_fraction, "seed": seed},
    )


def load_breast_cancer(test_fraction: float = 0.3, seed: int = 0) -> Dataset:
    """scikit-learn's breast cancer data: 569 x 30 numeric, standardised; each column its own group.

    Label: 1 = benign. No sensitive attribute.
    """
    from sklearn.datasets import load_breast_cancer as sk_load

    bunch = sk_load(as_frame=True)
    table, y = bunch.data, bunch.target.to_numpy(np.int32)
    train_idx, test_idx = stratified_split(len(table), y, test_fraction, seed)
    columns = tuple(table.columns)
    encoded = encode_tables(table.iloc[train_idx], table.iloc[test_idx], columns, ())
    return Dataset(
        name="breast_cancer",
        x_train=encoded.x_train, y_train=y[train_idx],
        x_test=encoded.x_test, y_test=y[test_idx],
        num_classes=2,
        feature_names=encoded.feature_names, group_names=encoded.group_names,
        feature_groups=encoded.feature_groups,
        source={"name": "breast_cancer", "test_fraction": test_fraction, "seed": seed},
    )


def load_csv(
    path: str | os.PathLike,
    label: str,
    sensitive: str | None = None,
    categorical: Sequence[str] = (),
    test_fraction: float = 0.3,
    seed: int = 0,
    positive: str | None = None,
    binary_label: bool = True,
) -> Dataset:
    """A user's CSV (header row required), encoded like the shipped tabular data sets.

    ``label`` is the target column; with ``binary_label`` it must hold exactly two values, the
    sorted second one (or ``positive``) becoming class 1. ``sensitive`` (optional) is a column (each
    of its values a group; two or more) or ``column=value`` (that value against the rest). It stays
    a feature, as in Adult. Columns in
    ``categorical`` are one-hot encoded, all other non-label columns must be numeric without missing
    values and are standardised. Split stratified by label from ``seed``.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"CSV file not found: {path}")
    try:
        table = pd.read_csv(path, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise DatasetError(f"CSV file {path} is empty") from None
    if table.empty:
        raise DatasetError(f"CSV file {path} has a header but no rows")
    available = list(table.columns)
    for role, column in [("label", label), ("sensitive", None if sensitive is None else sensitive.partition("=")[0])] + [
        ("categorical", c) for c in categorical
    ]:
        if column is not None and column not in available:
            raise DatasetError(
                f"unknown {role} column {column!r} in {path}; columns are: {', '.join(available)}"
            )
    features = [c for c in available if c != label]
    if not features:
        raise DatasetError(f"CSV file {path} has no feature columns besides the label {label!r}")
    for column in features:
        if column in categorical:
            continue
        if not pd.api.types.is_numeric_dtype(table[column]):
            raise DatasetError(
                f"column {column!r} in {path} is not numeric; name it in categorical=[...] "
                f"(--categorical on the command line)"
            )
        if table[column].isna().any():
            raise DatasetError(f"numeric column {column!r} in {path} has missing values")

    y, label_levels = _encode_label(table[label], binary_label, positive, f"label column {label!r}")
    train_idx, test_idx = stratified_split(len(table), y, test_fraction, seed)
    s_train = s_test = None
    groups: tuple[str, ...] = ()
    if sensitive is not None:
        column = table[sensitive.partition("=")[0]]
        if column.isna().any():
            raise DatasetError(f"sensitive column {sensitive.partition('=')[0]!r} has missing values")
        s_train, s_test, groups = sensitive_codes(column.iloc[train_idx], column.iloc[test_idx], sensitive)
    encoded = encode_tables(table.iloc[train_idx], table.iloc[test_idx], features, categorical)
    return Dataset(
        name=path.stem,
        x_train=encoded.x_train, y_train=y[train_idx],
        x_test=encoded.x_test, y_test=y[test_idx],
        num_classes=len(label_levels),
        s_train=s_train,
        s_test=s_test,
        sensitive_name=sensitive,
        sensitive_groups=groups,
        feature_names=encoded.feature_names, group_names=encoded.group_names,
        feature_groups=encoded.feature_groups,
        source={
            "name": "csv", "path": str(path.resolve()), "label": label, "sensitive": sensitive,
            "categorical": list(categorical), "test_fraction": test_fraction, "seed": seed,
            "positive": positive, "binary_label": binary_label,
        },
    )


def _encode_label(values: pd.Series, binary: bool, positive: str | None, what: str):
    """Integer codes [n] int32 for a label-like column, and its sorted levels."""
    if values.isna().any():
        raise DatasetError(f"{what} has missing values")
    levels = sorted(values.astype(str).unique())
    if binary and len(levels) != 2:
        shown = ", ".join(levels[:10]) + (", ..." if len(levels) > 10 else "")
        raise DatasetError(f"{what} must be binary but holds {len(levels)} values: {shown}")
    if len(levels) < 2:
        raise DatasetError(f"{what} holds a single value {levels[0]!r}; nothing to learn")
    if positive is not None:
        if positive not in levels:
            raise DatasetError(f"positive={positive!r} is not a value of {what}: {', '.join(levels)}")
        levels = [level for level in levels if level != positive] + [positive]
    codes = values.astype(str).map({level: i for i, level in enumerate(levels)})
    return codes.to_numpy(np.int32), levels


