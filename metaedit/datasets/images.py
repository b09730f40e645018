"""Image data sets: scikit-learn's 8x8 digits, the shipped MNIST-5k, and MNIST-1D generated locally.

Arrays are ``[n, *spatial, channels]`` with values scaled to about unit range.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from metaedit.datasets.base import Dataset, shipped_text, stratified_split


def load_digits(test_fraction: float = 0.3, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits: x [n, 8, 8, 1] in [0, 1], 10 classes, split stratified."""
    from sklearn.datasets import load_digits as sk_load

    bunch = sk_load()
    x = (bunch.images / 16.0).astype(np.float32)[..., None]
    y = bunch.target.astype(np.int32)
    train_idx, test_idx = stratified_split(len(y), y, test_fraction, seed)
    return Dataset(
        name="digits", x_train=x[train_idx], y_train=y[train_idx], x_test=x[test_idx],
        y_test=y[test_idx], num_classes=10,
        source={"name": "digits", "test_fraction": test_fraction, "seed": seed},
    )


def load_mnist5k(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """5,000 MNIST digits shipped with the package: x [n, 28, 28, 1] in [0, 1], split stratified."""
    import pandas as pd

    table = pd.read_csv(io.StringIO(shipped_text("mnist_5k.csv.gz")), header=None).to_numpy()
    x = (table[:, :784] / 255.0).astype(np.float32).reshape(-1, 28, 28, 1)
    y = table[:, 784].astype(np.int32)
    train_idx, test_idx = stratified_split(len(y), y, test_fraction, seed)
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

