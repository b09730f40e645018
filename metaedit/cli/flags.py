"""Command-line flags built from config dataclasses, so a default is written once.

:func:`add_options` adds one flag per :func:`metaedit.options.option` field (``--chunk-steps`` for
``chunk_steps``) with the field's help text and its default; :func:`config_from` builds the config
from the flags the user gave, leaving every other field at the dataclass's own default.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Iterable


def _plain_type(kind: Any) -> Any:
    """``X`` for ``X | None``; the annotation otherwise."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return kind


def show(value: Any, comma: bool = False) -> str:
    """A default as the help text shows it (tuples joined by spaces, or by commas with ``comma``)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return (("," if comma else " ").join(map(str, value))) if value else "none"
    return "none" if value is None else str(value)


def comma_list(item_type):
    """An argparse type: a comma-separated list of ``item_type`` values, as a tuple."""
    def parse(text: str) -> tuple:
        return tuple(item_type(part.strip()) for part in text.split(",") if part.strip())
    parse.__name__ = f"comma-separated {item_type.__name__} list"
    return parse


def add_options(parser: argparse.ArgumentParser, cls: type, *, only: Iterable[str] | None = None,
                skip: Iterable[str] = (), required: Iterable[str] = (), help_defaults: dict | None = None) -> None:
    """Adds a flag per option field of ``cls`` (in declaration order), except those in ``skip`` or not in
    ``only`` and fields declared with ``flag=False``. Flags in ``required`` must be given;
    ``help_defaults[name]`` replaces the default the help shows (for a default that depends on data)."""
    hints = typing.get_type_hints(cls)
    only, skip, required = (set(only) if only is not None else None), set(skip), set(required)
    for field in dataclasses.fields(cls):
        if (only is not None and field.name not in only) or field.name in skip or not field.metadata.get("flag", True):
            continue
        kind = _plain_type(hints[field.name])
        shown = str((help_defaults or {}).get(field.name, show(field.default))).replace("%", "%%")
        text = field.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
        says_default = field.name in required or "(default:" in text  # the help explains its own default
        options: dict[str, Any] = {"dest": field.name, "default": argparse.SUPPRESS,
                                   "help": text if says_default else f"{text} (default: {shown})"}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is tuple:
            items = typing.get_args(kind)
            if len(items) == 2 and items[1] is Ellipsis:
                options["type"] = comma_list(items[0])
                shown_list = (help_defaults or {}).get(field.name, ",".join(map(str, field.default)))
                if not says_default and field.default:
                    options["help"] = f"{text} (default: {str(shown_list).replace('%', '%%')})"
                options["metavar"] = field.metadata.get("metavar", "A,B,...")
            else:
                options.update(type=items[0], nargs=len(items), metavar=field.metadata.get("metavar"))
        else:
            options["type"] = kind
            if "metavar" in field.metadata:
                options["metavar"] = field.metadata["metavar"]
        if "choices" in field.metadata:
            options["choices"] = field.metadata["choices"]
        if field.name in required:
            options["required"] = True
        parser.add_argument("--" + field.name.replace("_", "-"), **options)


def given(args: argparse.Namespace, cls: type) -> dict:
    """The fields of ``cls`` the user gave on the command line (tuples as tuples)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items() if k in names}


def config_from(args: argparse.Namespace, cls: type, **overrides: Any) -> Any:
    """``cls`` from the flags the user gave (others at their defaults), then ``overrides``."""
    return cls(**{**given(args, cls), **overrides})
