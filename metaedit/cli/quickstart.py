"""``metaedit quickstart``: the main job, end to end (see :mod:`metaedit.quickstart`)."""

from __future__ import annotations

import argparse

from metaedit import quickstart
from metaedit.cli import flags


def _quickstart_command(args: argparse.Namespace) -> int:
    chosen = flags.given(args, quickstart.QuickstartConfig)
    if "csv" in chosen and "dataset" in chosen:
        raise quickstart.QuickstartError("give either --dataset or --csv, not both")
    quickstart.run_quickstart(quickstart.QuickstartConfig(**chosen))
    return 0


def register(commands) -> None:
    """Adds ``quickstart`` to the ``metaedit`` parser."""
    parser = commands.add_parser(
        "quickstart", help="the main job: zoo, editor, baselines and a certified LID, with a report",
        description="Train a zoo and one editor, edit the held-out networks across the trade-off, compare with "
                    "the baselines, certify one edited network, and write report.md, metrics.csv and pareto.png.")
    flags.add_options(parser, quickstart.QuickstartConfig)
    parser.set_defaults(run=_quickstart_command)
