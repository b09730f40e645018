"""``python -m metaedit.cli``: the same as the ``metaedit`` command."""

from metaedit.cli import entry

entry()
