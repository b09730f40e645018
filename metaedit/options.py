"""Configuration dataclasses: documented fields and a JSON round trip.

Every settings dataclass of the project (zoo, editor training, LID solver, safe updates,
quickstart, experiments) declares its fields with :func:`option`, a default plus a help text. The
command line builds its flags from these fields (:mod:`metaedit.cli.flags`), so a default is
written once and the help can never disagree with the code. :func:`to_dict` / :func:`from_dict`
turn a config into a JSON-ready record and back (tuples become lists; nested configs are records).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any


def option(default: Any, help: str, **metadata: Any) -> Any:
    """A dataclass field with ``default`` and a ``help`` text (the command line's help for its flag).

    ``metadata`` may add ``flag=False`` (no command-line flag), ``choices=(...)``, ``metavar=...``.
    """
    if isinstance(default, (list, dict, set)):
        raise TypeError("option defaults must be immutable (use a tuple)")
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def to_dict(config: Any) -> dict:
    """A JSON-ready record of a config dataclass (tuples as lists, nested configs as records)."""
    return {f.name: _plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return to_dict(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def from_dict(cls: type, record: dict) -> Any:
    """The config of class ``cls`` that :func:`to_dict` recorded (unknown keys are an error)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(record) - names)
    if unknown:
        raise ValueError(f"{cls.__name__} has no settings {unknown}")
    values = {}
    for name, value in record.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind) and isinstance(value, dict):
            value = from_dict(kind, value)
        elif isinstance(value, list):
            value = _tuples(value)
        values[name] = value
    return cls(**values)


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value

