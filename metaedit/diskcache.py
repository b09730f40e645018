"""What the command line's disk caches share (:mod:`metaedit.executables`, :mod:`metaedit.datasets.cache`):
a directory that is switched on or off, a digest of this project's source to name entries by, and
writes that a reader never sees half done."""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Callable


class Switch:
    """A cache directory, on (``path`` a Path) or off (``path`` None); ``on_disable`` runs when it is
    turned off (e.g. to forget what was loaded from it)."""

    def __init__(self, on_disable: Callable[[], None] | None = None):
        self.path: Path | None = None
        self._on_disable = on_disable

    def enable(self, directory: str | Path) -> None:
        """Keeps entries in ``directory`` (created when first written)."""
        self.path = Path(directory)

    def disable(self) -> None:
        """Turns the cache off."""
        self.path = None
        if self._on_disable is not None:
            self._on_disable()

    def directory(self) -> Path | None:
        """Where entries are kept (None: the cache is off)."""
        return self.path


@functools.cache
def source_digest() -> str:
    """A digest of every ``.py`` file of the ``metaedit`` and ``certify`` packages (names and
    contents): an edited or upgraded package never reads an entry written by another."""
    digest = hashlib.sha256()
    for package in ("metaedit", "certify"):
        root = Path(__import__(package).__file__).parent
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(root.parent)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def write_atomically(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` through a temporary file renamed into place (creating the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    temporary.replace(path)
