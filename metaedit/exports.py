"""Public APIs that import on first use: a package's ``__init__`` names its entry points, and each
is imported from its module only when a user first reads it (``import metaedit`` stays cheap, and
no package imports another's modules at import time)."""

from __future__ import annotations

import importlib
from typing import Callable


def lazy(package: str, namespace: dict, exports: dict[str, tuple[str, ...]],
         aliases: dict[str, tuple[str, str]] | None = None) -> tuple[list[str], Callable, Callable]:
    """``(__all__, __getattr__, __dir__)`` for ``package`` whose ``namespace`` (its ``globals()``)
    exports ``exports[module]`` names from each module, plus ``aliases[name] = (module, attribute)``."""
    where = {name: (module, name) for module, names in exports.items() for name in names} | (aliases or {})

    def getattr_(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, attribute = where[name]
        value = getattr(importlib.import_module(module), attribute)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted(set(namespace) | set(where))

    return sorted(where), getattr_, dir_
