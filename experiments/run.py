"""The one experiment runner: ``python -m experiments.run --config NAME [--<setting> VALUE ...]``.

A config (``experiments/configs/NAME.py``, a ``get_config()``) is a dataclass of one experiment
family (:mod:`experiments.compliance`, :mod:`experiments.lid`, :mod:`experiments.continual`,
:mod:`experiments.finetune`); each of its option fields is also a flag here, shown with the config's
value as its default. The family's ``run(config)`` returns its tables, ``report_of(config,
tables)`` builds the report, and the runner writes both into the config's ``out`` folder
(``report.md``, the CSV tables, the figures; a family may derive the folder from the config,
``default_out``). ``--report-only`` rebuilds the report from the tables a finished run wrote;
``--merge A B ...`` joins the tables of runs written into the folders A, B, ... (e.g. seeds run in
parallel) into the config's folder and builds the report of them all.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import pkgutil
import sys
from pathlib import Path
from typing import Sequence

from experiments import configs
from metaedit import report
from metaedit.cli import flags


def names() -> list[str]:
    """The configs in ``experiments/configs``."""
    return sorted(m.name for m in pkgutil.iter_modules(configs.__path__))


def load(name: str):
    """The config ``name`` (``experiments.configs.<name>.get_config()``)."""
    return importlib.import_module(f"experiments.configs.{name}").get_config()


def family(config):
    """The module of the config's experiment family (it has ``run``, ``report_of`` and ``TABLES``)."""
    return importlib.import_module(type(config).__module__)


def execute(config, report_only: bool = False, merge: Sequence[str] = ()) -> tuple[Path, dict[str, list[dict]]]:
    """Runs one experiment (or only rebuilds its report, or merges the tables of the ``merge``
    folders) and writes everything into ``config.out``; returns the report's path and the tables."""
    module = family(config)
    out = Path(config.out if config.out is not None else module.default_out(config))
    if merge:
        tables = merged_tables(module.TABLES, [Path(folder) for folder in merge])
    elif report_only:
        tables = {name: report.read_csv(out / name) for name in module.TABLES if (out / name).is_file()}
    else:
        tables = module.run(config)
    return module.report_of(config, tables).write(out, tables), tables


def merged_tables(names: Sequence[str], folders: Sequence[Path]) -> dict[str, list[dict]]:
    """The rows of each table ``names[i]`` of every folder, in the folders' order; a folder without
    the first table is an error (named), later tables may be missing from some folders."""
    if len({folder.resolve() for folder in folders}) < len(folders):
        raise SystemExit("error: --merge: a folder is given twice (its rows would count twice)")
    for folder in folders:
        if not (folder / names[0]).is_file():
            raise SystemExit(f"error: --merge: {folder} has no {names[0]} (not a finished run of this experiment)")
    return {name: [row for folder in folders if (folder / name).is_file() for row in report.read_csv(folder / name)]
            for name in names}


def main(argv: list[str] | None = None) -> int:
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--config", choices=names())
    known, _ = first.parse_known_args(argv)
    parser = argparse.ArgumentParser(prog="python -m experiments.run", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, choices=names(), help="the experiment to run")
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from the tables of a finished run")
    parser.add_argument("--merge", nargs="+", default=(), metavar="FOLDER",
                        help="join the tables of finished runs in these folders (e.g. seeds run in parallel) and "
                             "write them, with their report, into the config's folder")
    if known.config:
        config = load(known.config)
        flags.add_options(parser, type(config), help_defaults={f.name: flags.show(getattr(config, f.name), comma=True)
                                                               for f in dataclasses.fields(config)})
    args = parser.parse_args(argv)
    config = dataclasses.replace(config, **flags.given(args, type(config)))
    written, _ = execute(config, args.report_only, args.merge)
    print(f"wrote {written}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
