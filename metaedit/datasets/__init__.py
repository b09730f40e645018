"""Data sets shipped with metaedit, and a loader for a user's own CSV, in one typed container.

Tabular data sets (Adult, German credit, breast cancer, a user's CSV) come with a binary sensitive
attribute and *feature groups* (see :mod:`metaedit.datasets.encoding`). Image data sets (digits,
MNIST-5k, MNIST-1D) come as ``[n, *spatial, channels]`` arrays with values scaled to about unit
range. Every split that the source does not fix is drawn, stratified by label, from ``seed``.
"""

from __future__ import annotations

from typing import Callable, Sequence

from metaedit.datasets import cache
from metaedit.datasets.base import Dataset, DatasetError
from metaedit.datasets.images import load_digits, load_mnist1d, load_mnist5k
from metaedit.datasets.tabular import load_adult, load_breast_cancer, load_csv, load_german

__all__ = ["Dataset", "DatasetError", "LOADERS", "SHIPPED", "load_dataset", "load_named", "load_source", "load_adult",
           "load_german", "load_breast_cancer", "load_csv", "load_digits", "load_mnist5k", "load_mnist1d"]

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
    """Loads a data set by registry name (``LOADERS``) with the loader's keyword options (a shipped
    one through :mod:`metaedit.datasets.cache` when that is on)."""
    if name not in LOADERS:
        raise DatasetError(f"unknown data set {name!r}; known: {', '.join(sorted(LOADERS))}")
    try:
        if name == "csv":  # a user's file may change under the same name: never cached
            return LOADERS[name](**options)
        return cache.load(name, options, LOADERS[name])
    except TypeError as error:
        if "unexpected keyword" in str(error):
            raise DatasetError(f"data set {name!r}: {error}") from None
        raise


def load_named(dataset: str | None = None, csv: str | None = None, label: str | None = None,
               sensitive: str | None = None, categorical: Sequence[str] = ()) -> Dataset:
    """A shipped data set by name, or a user's CSV with its label, sensitive and categorical columns:
    what the command line's ``--dataset`` / ``--csv --label --sensitive --categorical`` name."""
    if csv is not None:
        if label is None:
            raise DatasetError("--csv needs --label (the target column)")
        return load_csv(csv, label=label, sensitive=sensitive, categorical=categorical)
    if label is not None or categorical:
        raise DatasetError("--label and --categorical describe a --csv file; this run uses --dataset")
    if dataset is None:
        raise DatasetError("name the data: --dataset NAME, or --csv FILE --label COLUMN")
    return load_dataset(dataset, **({"sensitive": sensitive} if sensitive else {}))


def load_source(source: dict) -> Dataset:
    """Loads a data set again from its ``Dataset.source`` record."""
    options = dict(source)
    return load_dataset(options.pop("name"), **options)

SHIPPED = tuple(sorted(name for name in LOADERS if name != "csv"))
"""The names of the data sets that ship with the package (every loader but ``csv``)."""
