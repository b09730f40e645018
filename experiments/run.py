"""The one experiment runner: ``python -m experiments.run --config NAME [--<setting> VALUE ...]``.

A config (``experiments/configs/NAME.py``, a ``get_config()``) is a dataclass of one experiment
family (:mod:`experiments.compliance`, :mod:`experiments.lid`, :mod:`experiments.continual`,
:mod:`experiments.finetune`); each of its option fields is also a flag here, shown with the config's
value as its default. The family's ``run(config)`` returns its tables, ``report_of(config,
tables)`` builds the report, and the runner writes both into the config's ``out`` folder
(``report.md``, the CSV tables, the figures; a family may derive the folder from the config,
``default_out``). ``--report-only`` rebuilds the report from the tables a finished run wrote.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import pkgutil
import sys
from pathlib import Path

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


def execute(config, report_only: bool = False) -> tuple[Path, dict[str, list[dict]]]:
    """Runs one experiment (or only rebuilds its report) and writes everything into ``config.out``;
    returns the report's path and the tables."""
    module = family(config)
    out = Path(config.out if config.out is not None else module.default_out(config))
    if report_only:
        tables = {name: report.read_csv(out / name) for name in module.TABLES if (out / name).is_file()}
    else:
        tables = module.run(config)
    return module.report_of(config, tables).write(out, tables), tables


def main(argv: list[str] | None = None) -> int:
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--config", choices=names())
    known, _ = first.parse_known_args(argv)
    parser = argparse.ArgumentParser(prog="python -m experiments.run", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, choices=names(), help="the experiment to run")
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from the tables of a finished run")
    if known.config:
        config = load(known.config)
        flags.add_options(parser, type(config), help_defaults={f.name: flags.show(getattr(config, f.name), comma=True)
                                                               for f in dataclasses.fields(config)})
    args = parser.parse_args(argv)
    config = dataclasses.replace(config, **flags.given(args, type(config)))
    written, _ = execute(config, args.report_only)
    print(f"wrote {written}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
