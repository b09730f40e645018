"""Data sets shipped with metaedit, and a loader for a user's own CSV, in one typed container.

Tabular data sets (Adult, German credit, breast cancer, a user's CSV) come with a binary sensitive
attribute and *feature groups* (see :mod:`metaedit.tabular`). Image data sets (digits, MNIST-5k,
MNIST-1D) come as ``[n, *spatial, channels]`` arrays with values scaled to about unit range.

Every split that the source does not fix is drawn, stratified by label, from ``seed``.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.resources
import io
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from metaedit.tabular import encode_tables


class DatasetError(ValueError):
    """A data set could not be loaded as asked (unknown name or column, bad label, empty file)."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled data set with a train/test split and fairness metadata.

    x_train: [n_train, *input_shape] float32.  y_train: [n_train] int32 in [0, num_classes).
    s_train: [n_train] int32 in {0, 1}, the sensitive attribute, or None where there is none.
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
    feature_names: tuple[str, ...] = ()
    group_names: tuple[str, ...] = ()
    feature_groups: tuple[tuple[int, ...], ...] = ()
    source: dict = dataclasses.field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, without the batch axis."""
        return tuple(self.x_train.shape[1:])

    @property
    def is_tabular(self) -> bool:
        return bool(self.feature_groups)

    def __repr__(self) -> str:
        sensitive = f", sensitive={self.sensitive_name!r}" if self.sensitive_name else ""
        groups = f", groups={len(self.feature_groups)}" if self.feature_groups else ""
        return (
            f"Dataset({self.name!r}, train={len(self.y_train)}, test={len(self.y_test)}, "
            f"input_shape={self.input_shape}, classes={self.num_classes}{groups}{sensitive})"
        )


# --------------------------------------------------------------------------- shipped files

_SHA256 = {
    "adult.data.gz": "0929e9d9c7845175493be1a8fd071b8e746a6b9f66d8bf359daabaac44713023",
    "adult.test.gz": "fcd5bcc9b18515fd2fd314e2bbd8444263ad0f2a0e638c060c34b0151555aaa2",
    "german.data.gz": "fb4b9063096409b19d03ae007ce2f195232a04f8ac4665112f78f312f962536a",
    "mnist_5k.csv.gz": "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d",
}


def _shipped_text(filename: str) -> str:
    """Decompressed text of a file in ``metaedit/data``, checked against its known sha256."""
    raw = importlib.resources.files("metaedit").joinpath("data", filename).read_bytes()
    if hashlib.sha256(raw).hexdigest() != _SHA256[filename]:
        raise DatasetError(f"shipped data file metaedit/data/{filename} is damaged (sha256 mismatch)")
    return gzip.decompress(raw).decode("utf-8")


def _stratified_split(n: int, y: np.ndarray, test_fraction: float, seed: int):
    if not 0.0 < test_fraction < 1.0:
        raise DatasetError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    return train_test_split(np.arange(n), test_size=test_fraction, random_state=seed, stratify=y)


# --------------------------------------------------------------------------- tabular

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
    Label: income > 50K. ``sensitive``: ``"sex"`` (1 = Male) or ``"race"`` (1 = White).
    Shapes: x_train [30162, 104], x_test [15060, 104].
    """
    if sensitive not in ("sex", "race"):
        raise DatasetError(f"adult: sensitive must be 'sex' or 'race', got {sensitive!r}")
    names = list(_ADULT_COLUMNS) + ["income"]
    tables = []
    for filename, skip in (("adult.data.gz", 0), ("adult.test.gz", 1)):
        table = pd.read_csv(
            io.StringIO(_shipped_text(filename)), header=None, names=names, skiprows=skip,
            skipinitialspace=True, na_values="?",
        ).dropna()
        table["income"] = table["income"].str.rstrip(".")
        for column in ("capital-gain", "capital-loss"):
            table[column] = np.log1p(table[column].astype(np.float64))
        tables.append(table.reset_index(drop=True))
    train, test = tables
    encoded = encode_tables(train, test, _ADULT_COLUMNS, _ADULT_CATEGORICAL)
    privileged = {"sex": "Male", "race": "White"}[sensitive]
    return Dataset(
        name="adult",
        x_train=encoded.x_train,
        y_train=(train["income"] == ">50K").to_numpy(np.int32),
        x_test=encoded.x_test,
        y_test=(test["income"] == ">50K").to_numpy(np.int32),
        num_classes=2,
        s_train=(train[sensitive] == privileged).to_numpy(np.int32),
        s_test=(test[sensitive] == privileged).to_numpy(np.int32),
        sensitive_name=sensitive,
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
    if sensitive not in ("sex", "age"):
        raise DatasetError(f"german: sensitive must be 'sex' or 'age', got {sensitive!r}")
    table = pd.read_csv(
        io.StringIO(_shipped_text("german.data.gz")), sep=" ", header=None,
        names=list(_GERMAN_COLUMNS) + ["credit"],
    )
    y = (table["credit"] == 1).to_numpy(np.int32)
    if sensitive == "sex":
        s = (~table["personal-status-sex"].isin(["A92", "A95"])).to_numpy(np.int32)
    else:
        s = (table["age"] > 25).to_numpy(np.int32)
    train_idx, test_idx = _stratified_split(len(table), y, test_fraction, seed)
    categorical = [c for c in _GERMAN_COLUMNS if c not in _GERMAN_NUMERIC]
    encoded = encode_tables(table.iloc[train_idx], table.iloc[test_idx], _GERMAN_COLUMNS, categorical)
    return Dataset(
        name="german",
        x_train=encoded.x_train, y_train=y[train_idx],
        x_test=encoded.x_test, y_test=y[test_idx],
        num_classes=2,
        s_train=s[train_idx], s_test=s[test_idx], sensitive_name=sensitive,
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
    train_idx, test_idx = _stratified_split(len(table), y, test_fraction, seed)
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
    sorted second one (or ``positive``) becoming class 1. ``sensitive`` (optional) must hold exactly
    two values; the sorted second becomes 1. It stays a feature, as in Adult. Columns in
    ``categorical`` are one-hot encoded, all other non-label columns must be numeric without missing
    values and are standardised. Split stratified by label from ``seed``.
    """
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
    for role, column in [("label", label), ("sensitive", sensitive)] + [
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
    s = None
    if sensitive is not None:
        s, _ = _encode_label(table[sensitive], True, None, f"sensitive column {sensitive!r}")
    train_idx, test_idx = _stratified_split(len(table), y, test_fraction, seed)
    encoded = encode_tables(table.iloc[train_idx], table.iloc[test_idx], features, categorical)
    return Dataset(
        name=path.stem,
        x_train=encoded.x_train, y_train=y[train_idx],
        x_test=encoded.x_test, y_test=y[test_idx],
        num_classes=len(label_levels),
        s_train=None if s is None else s[train_idx],
        s_test=None if s is None else s[test_idx],
        sensitive_name=sensitive,
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


# --------------------------------------------------------------------------- images


def load_digits(test_fraction: float = 0.3, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits: x [n, 8, 8, 1] in [0, 1], 10 classes, split stratified."""
    from sklearn.datasets import load_digits as sk_load

    bunch = sk_load()
    x = (bunch.images / 16.0).astype(np.float32)[..., None]
    y = bunch.target.astype(np.int32)
    train_idx, test_idx = _stratified_split(len(y), y, test_fraction, seed)
    return Dataset(
        name="digits", x_train=x[train_idx], y_train=y[train_idx], x_test=x[test_idx],
        y_test=y[test_idx], num_classes=10,
        source={"name": "digits", "test_fraction": test_fraction, "seed": seed},
    )


def load_mnist5k(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """5,000 MNIST digits shipped with the package: x [n, 28, 28, 1] in [0, 1], split stratified."""
    table = pd.read_csv(io.StringIO(_shipped_text("mnist_5k.csv.gz")), header=None).to_numpy()
    x = (table[:, :784] / 255.0).astype(np.float32).reshape(-1, 28, 28, 1)
    y = table[:, 784].astype(np.int32)
    train_idx, test_idx = _stratified_split(len(y), y, test_fraction, seed)
    return Dataset(
        name="mnist5k", x_train=x[train_idx], y_train=y[train_idx], x_test=x[test_idx],
        y_test=y[test_idx], num_classes=10,
        source={"name": "mnist5k", "test_fraction": test_fraction, "seed": seed},
    )


def load_mnist1d(seed: int = 42) -> Dataset:
    """MNIST-1D generated locally (4,000 train / 1,000 test, x [n, 40, 1]), cached on disk.

    ``seed`` is the generator's seed (42 is the published data set). The cache lives in
    ``$METAEDIT_CACHE`` (default ``~/.cache/metaedit``); delete it to regenerate.
    """
    cache = Path(os.environ.get("METAEDIT_CACHE", Path.home() / ".cache" / "metaedit"))
    target = cache / f"mnist1d-seed{seed}.npz"
    if target.is_file():
        with np.load(target) as stored:
            arrays = {k: stored[k] for k in stored.files}
    else:
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.seed = seed
        generated = make_dataset(args)
        arrays = {k: np.asarray(generated[k]) for k in ("x", "y", "x_test", "y_test")}
        cache.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez_compressed(partial, **arrays)
        partial.replace(target)
    return Dataset(
        name="mnist1d",
        x_train=arrays["x"].astype(np.float32)[..., None], y_train=arrays["y"].astype(np.int32),
        x_test=arrays["x_test"].astype(np.float32)[..., None],
        y_test=arrays["y_test"].astype(np.int32), num_classes=10,
        source={"name": "mnist1d", "seed": seed},
    )


# --------------------------------------------------------------------------- registry

LOADERS: dict[str, Callable[..., Dataset]] = {
    "adult": load_adult,
    "german": load_german,
    "breast_cancer": load_breast_cancer,
    "digits": load_digits,
    "mnist5k": load_mnist5k,
    "mnist1d": load_mnist1d,
    "csv": load_csv,
}


def load_dataset(name: str, **options) -> Dataset:
    """Loads a data set by registry name (``LOADERS``) with the loader's keyword options."""
    if name not in LOADERS:
        raise DatasetError(f"unknown data set {name!r}; known: {', '.join(sorted(LOADERS))}")
    try:
        return LOADERS[name](**options)
    except TypeError as error:
        if "unexpected keyword" in str(error):
            raise DatasetError(f"data set {name!r}: {error}") from None
        raise


def load_source(source: dict) -> Dataset:
    """Loads a data set again from its ``Dataset.source`` record."""
    options = dict(source)
    return load_dataset(options.pop("name"), **options)
