"""Checkpoints: a thin wrapper over orbax's ``CheckpointManager`` that refuses bad checkpoints clearly.

A checkpoint directory holds numbered steps; each step stores one pytree of arrays (flattened to
named leaves) and one JSON record. The record carries, per leaf, its tree path, shape, dtype and a
sha256 of its bytes, so a restore checks the tree it is asked for *before* reading (architecture
mismatch) and the bytes it read *after* (corruption), raising :class:`CheckpointError` with the
directory, step and leaf instead of an orbax traceback. Saves are synchronous and atomic (orbax
writes to a temporary directory and renames), so a crash never damages an earlier step.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

FORMAT_KEY = "_checkpoint"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, incomplete, or does not match what was asked for."""


def _manager(directory: str | Path, max_to_keep: int | None = 2) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=False,
                                           create=True)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options,
                                 item_names=("arrays", "record"))


def _leaf_name(i: int) -> str:
    return f"leaf_{i:05d}"


def _flatten(tree: Any) -> tuple[list[str], list[Any]]:
    with_paths, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [jax.tree_util.keystr(p) for p, _ in with_paths], [leaf for _, leaf in with_paths]


def _digest(leaf: Any) -> str | None:
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        return None  # another process holds part of it; orbax checks its own chunks
    return hashlib.sha256(np.ascontiguousarray(np.asarray(leaf)).tobytes()).hexdigest()


def save(directory: str | Path, step: int, tree: Any, record: dict, max_to_keep: int | None = 2) -> None:
    """Writes ``tree`` (a pytree of arrays) and the JSON-ready ``record`` as ``step``.

    Keeps the newest ``max_to_keep`` steps (None keeps all).
    """
    paths, leaves = _flatten(tree)
    full_record = dict(record)
    full_record[FORMAT_KEY] = {
        "leaves": [
            {"path": p, "shape": list(np.shape(l)), "dtype": str(l.dtype), "sha256": _digest(l)}
            for p, l in zip(paths, leaves)
        ]
    }
    arrays = {_leaf_name(i): leaf for i, leaf in enumerate(leaves)}
    with _manager(directory, max_to_keep) as manager:
        manager.save(step, args=ocp.args.Composite(arrays=ocp.args.StandardSave(arrays),
                                                   record=ocp.args.JsonSave(full_record)))
        manager.wait_until_finished()


def steps(directory: str | Path) -> list[int]:
    """The steps saved under ``directory`` (empty if there is none or no directory)."""
    if not Path(directory).is_dir():
        return []
    with _manager(directory) as manager:
        return sorted(manager.all_steps())


def _resolve_step(directory: str | Path, step: int | None) -> int:
    available = steps(directory)
    if not available:
        raise CheckpointError(f"no checkpoint found in {directory}")
    if step is None:
        return available[-1]
    if step not in available:
        raise CheckpointError(f"{directory} has no step {step}; saved steps: {available}")
    return step


def read_record(directory: str | Path, step: int | None = None) -> tuple[int, dict]:
    """``(step, record)`` of ``step`` (default: the newest), without reading any array."""
    step = _resolve_step(directory, step)
    try:
        with _manager(directory) as manager:
            restored = manager.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore()))
        record = dict(restored.record)
    except Exception as error:  # orbax raises many kinds; all mean the same to a user
        raise CheckpointError(
            f"checkpoint {directory} step {step} has an unreadable record "
            f"({type(error).__name__}: {error}); it is corrupt or incomplete"
        ) from error
    if FORMAT_KEY not in record:
        raise CheckpointError(f"checkpoint {directory} step {step} was not written by metaedit")
    return step, record


def check_record(record: dict, expect: dict, where: str) -> None:
    """Raises :class:`CheckpointError` listing every key whose recorded value differs from ``expect``."""
    differences = [
        f"{key}: checkpoint has {record.get(key)!r}, expected {value!r}"
        for key, value in expect.items()
        if record.get(key) != value
    ]
    if differences:
        raise CheckpointError(f"checkpoint {where} does not match: " + "; ".join(differences))


def restore(
    directory: str | Path, abstract: Any, step: int | None = None, expect: dict | None = None
) -> tuple[Any, dict]:
    """Restores ``step`` (default: newest) into the structure of ``abstract``; returns ``(tree, record)``.

    ``abstract`` is a pytree of ``jax.ShapeDtypeStruct`` (with ``sharding`` to restore sharded
    arrays) or of arrays. ``expect`` maps record keys to required values (spec, config, ...).
    """
    step, record = read_record(directory, step)
    where = f"{directory} step {step}"
    if expect:
        check_record(record, expect, where)
    stored = record[FORMAT_KEY]["leaves"]
    paths, leaves = _flatten(abstract)
    if [s["path"] for s in stored] != paths:
        raise CheckpointError(
            f"checkpoint {where} holds a different tree: leaves {[s['path'] for s in stored][:6]}... "
            f"vs expected {paths[:6]}..."
        )
    for entry, leaf in zip(stored, leaves):
        if tuple(entry["shape"]) != tuple(leaf.shape) or entry["dtype"] != str(leaf.dtype):
            raise CheckpointError(
                f"checkpoint {where}: leaf {entry['path']} is {entry['dtype']}{entry['shape']}, "
                f"expected {leaf.dtype}{list(leaf.shape)}"
            )
    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    targets = {
        _leaf_name(i): jax.ShapeDtypeStruct(l.shape, l.dtype, sharding=getattr(l, "sharding", None) or local)
        for i, l in enumerate(leaves)
    }
    try:
        with _manager(directory) as manager:
            restored = manager.restore(
                step, args=ocp.args.Composite(arrays=ocp.args.StandardRestore(targets))
            )
        arrays = restored.arrays
        restored_leaves = [arrays[_leaf_name(i)] for i in range(len(leaves))]
    except Exception as error:
        raise CheckpointError(
            f"checkpoint {where} could not be read ({type(error).__name__}: {error}); "
            f"it is corrupt or incomplete"
        ) from error
    for entry, leaf in zip(stored, restored_leaves):
        digest = _digest(leaf)
        if entry["sha256"] is not None and digest is not None and digest != entry["sha256"]:
            raise CheckpointError(
                f"checkpoint {where}: leaf {entry['path']} does not match its recorded checksum; "
                f"the checkpoint is corrupt"
            )
    treedef = jax.tree_util.tree_structure(abstract)
    record = {k: v for k, v in record.items() if k != FORMAT_KEY}
    return jax.tree_util.tree_unflatten(treedef, restored_leaves), record
