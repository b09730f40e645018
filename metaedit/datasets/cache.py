"""A disk cache of the shipped data sets, encoded, so that a command does not parse and encode them again.

Parsing and encoding Adult takes 0.25 s and importing pandas for it 0.2 s: a tenth of a
``metaedit lid`` call. When the cache is on (:func:`enable`; the command line turns it on, in
``$METAEDIT_CACHE/datasets``), :func:`load` keeps each loaded data set as one ``.npz`` file (its
arrays, and its metadata as JSON) named by a digest of the data set's name and options, of the
shipped files' checksums and of the project's source, so that a changed encoder or file never
serves old data. A file that cannot be read is loaded from the source again and rewritten.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Callable

import numpy as np

from metaedit import diskcache
from metaedit.datasets.base import SHA256, Dataset

_ARRAYS = ("x_train", "y_train", "x_test", "y_test", "s_train", "s_test")
_CACHE = diskcache.Switch()
enable, disable, directory = _CACHE.enable, _CACHE.disable, _CACHE.directory
"""``enable(directory)`` keeps encoded data sets there; ``disable()`` turns that off; ``directory()``
says where they are kept (None: off)."""


def _key(name: str, options: dict) -> str:
    described = json.dumps({"name": name, "options": options, "files": SHA256, "code": diskcache.source_digest()},
                           sort_keys=True, default=str)
    return hashlib.sha256(described.encode()).hexdigest()[:40]


def load(name: str, options: dict, loader: Callable[..., Dataset]) -> Dataset:
    """``loader(**options)``, through the cache when it is on."""
    if _CACHE.path is None:
        return loader(**options)
    path = _CACHE.path / f"{name}-{_key(name, options)}.npz"
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
    stored = io.BytesIO()
    np.savez(stored, meta=np.array(json.dumps(meta)), **arrays)
    try:
        diskcache.write_atomically(path, stored.getvalue())
    except OSError:  # a read-only cache directory: nothing is kept
        pass
