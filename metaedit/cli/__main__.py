"""``python -m metaedit.cli``: the same as the ``metaedit`` command."""

import sys

from metaedit.cli import main

sys.exit(main())
