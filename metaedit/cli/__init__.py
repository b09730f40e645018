"""The ``metaedit`` command line: a thin layer over the library, one module per command group.

    metaedit quickstart                                   # the main job, with a report in results/quickstart
    metaedit zoo --dataset adult --arch mlp:32,32 --members 512 --out runs/adult-zoo
    metaedit info runs/adult-zoo [--json]
    metaedit export --zoo runs/adult-zoo --member 3 --out member3.npz
    metaedit lid --zoo runs/adult-zoo --member 3 --tau 0.8 --domain box --out runs/lid-box
    metaedit check --lid runs/lid-box [--params member3.npz] [--json]
    metaedit train-editor --zoo runs/adult-zoo --requirement pruning --steps 400 --out runs/editor-pruning
    metaedit evaluate --editor runs/editor-pruning --zoo runs/adult-zoo [--json]
    metaedit edit --editor runs/editor-pruning --params member3.npz --lambda 0.5 --out edited.npz
    metaedit edit --editor runs/editor-pruning --params member3.npz --lambda auto --certify --tau 0.8 --out edited.npz

Bad input ends with one line naming the problem and exit status 2. JAX's persistent compilation
cache lives in ``$METAEDIT_CACHE/jax`` (default ``~/.cache/metaedit/jax``), so a second run of a
command recompiles nothing; ``METAEDIT_COMPILATION_CACHE=0`` turns it off.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import importlib

GROUPS = {"quickstart": "quickstart", "zoo": "zoo", "info": "zoo", "export": "zoo", "lid": "certify",
          "check": "certify", "train-editor": "editor", "evaluate": "editor", "edit": "editor"}
"""Each command and the module of ``metaedit.cli`` that registers it (imported only when needed: the
editor's modules are slow to import, and ``metaedit lid`` should not wait for them)."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, ``metaedit <command>: error: ...``, exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; given ``argv`` whose command is known, only that command's group is registered."""
    parser = Parser(prog="metaedit", description=__doc__.split("\n")[0],
                                     epilog="\n".join(__doc__.split("\n")[1:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    command = next((a for a in argv or () if not a.startswith("-")), None)
    groups = [GROUPS[command]] if command in GROUPS else list(dict.fromkeys(GROUPS.values()))
    for group in groups:
        importlib.import_module(f"metaedit.cli.{group}").register(commands)
    return parser


def user_errors() -> tuple[type[Exception], ...]:
    """The exceptions that mean bad input (a one-line message, exit status 2), not a bug."""
    from certify.bounds import BoundError
    from certify.certificates import CertificateError
    from certify.continual.tasks import ContinualError
    from certify.domains import DomainError
    from certify.solver import LIDError
    from metaedit.checkpoint import CheckpointError
    from metaedit.datasets import DatasetError
    from metaedit.editor import EditorTrainingError
    from metaedit.gmn import EditorError
    from metaedit.nets import SpecError
    from metaedit.quickstart import QuickstartError
    from metaedit.requirements import RequirementError
    from metaedit.zoo import ZooError

    return (DatasetError, SpecError, ZooError, CheckpointError, LIDError, CertificateError, DomainError,
            EditorTrainingError, EditorError, RequirementError, QuickstartError, ContinualError, BoundError)


def use_compilation_cache() -> None:
    """Turns on JAX's persistent compilation cache unless ``METAEDIT_COMPILATION_CACHE=0`` (or a cache
    directory was already chosen)."""
    if os.environ.get("METAEDIT_COMPILATION_CACHE", "1") == "0":
        return
    import jax

    if jax.config.jax_compilation_cache_dir:
        return
    root = Path(os.environ.get("METAEDIT_CACHE", Path.home() / ".cache" / "metaedit"))
    jax.config.update("jax_compilation_cache_dir", str(root / "jax"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser(sys.argv[1:] if argv is None else argv).parse_args(argv)
    except SystemExit as stop:  # --help, or a usage error already printed
        return int(stop.code or 0)
    use_compilation_cache()
    try:
        return args.run(args)
    except user_errors() as error:
        print(f"metaedit: error: {error}", file=sys.stderr)
        return 2
