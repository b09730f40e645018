"""A disk cache of the shipped data sets, encoded, so that a command does not parse and encode them again.

Parsing and encoding Adult takes 0.25 s and importing pandas for it 0.2 s: a tenth of a
``metaedit lid`` call. When the cache is on (:func:`enable`; the command line turns it on, in
``$METAEDIT_CACHE/datasets``), :func:`load` keeps each loaded data set as one ``.npz`` file (its
arrays, and its metadata as JSON) named by a digest of the data set's name and options, of the
shipped files' checksums and of this package's source, so that a changed encoder or file never
serves old data. A file that cannot be read is loaded from the source again and rewritten.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

from metaedit.datasets.base import SHA256, Dataset

_DIRECTORY: Path | None = None
_ARRAYS = ("x_train", "y_train", "x_test", "y_test", "s_train", "s_test")


def enable(directory: str | Path) -> None:
    """Keeps encoded data sets in ``directory`` (created when first written)."""
    global _DIRECTORY
    _DIRECTORY = Path(directory)


def disable() -> None:
    """Turns the cache off."""
    global _DIRECTORY
    _DIRECTORY = None


def directory() -> Path | None:
    """Where encoded data sets are kept (None: the cache is off)."""
    return _DIRECTORY


@functools.cache
def _package_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _key(name: str, options: dict) -> str:
    described = json.dumps({"name": name, "options": options, "files": SHA256, "code": _package_digest()},
                           sort_keys=True, default=str)
    return hashlib.sha256(described.encode()).hexdigest()[:40]


def load(name: str, options: dict, loader: Callable[..., Dataset]) -> Dataset:
    """``loader(**options)``, through the cache when it is on."""
    if _DIRECTORY is None:
        return loader(**options)
    path = _DIRECTORY / f"{name}-{_key(name, options)}.npz"
    if path.exists():
        try:
            return _read(path)
        except Exception:  # a damaged file: load from the source and write it again
            pass
    dataset = loader(**options)
    _write(path, dataset)
    return dataset


def _read(path: Path) -> Dataset:
    with np.load(path, allow_pickle=False) as stored:
        meta = json.loads(str(stored["meta"]))
        arrays = {k: (stored[k] if k in stored.files else None) for k in _ARRAYS}
    return Dataset(name=meta["name"], num_classes=meta["num_classes"], sensitive_name=meta["sensitive_name"],
                   sensitive_groups=tuple(meta["sensitive_groups"]), feature_names=tuple(meta["feature_names"]),
                   group_names=tuple(meta["group_names"]),
                   feature_groups=tuple(tuple(g) for g in meta["feature_groups"]), source=meta["source"],
                   **arrays)


def _write(path: Path, dataset: Dataset) -> None:
    meta = {"name": dataset.name, "num_classes": dataset.num_classes, "sensitive_name": dataset.sensitive_name,
            "sensitive_groups": list(dataset.sensitive_groups), "feature_names": list(dataset.feature_names),
            "group_names": list(dataset.group_names),
            "feature_groups": [[int(i) for i in g] for g in dataset.feature_groups], "source": dataset.source}
    arrays = {k: getattr(dataset, k) for k in _ARRAYS if getattr(dataset, k) is not None}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(temporary, meta=np.array(json.dumps(meta)), **arrays)
        temporary.replace(path)
    except OSError:  # a read-only cache directory: nothing is kept
        pass
