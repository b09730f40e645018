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
command recompiles nothing, and the solver's and certificates' programs are kept whole in
``$METAEDIT_CACHE/executables`` (:mod:`metaedit.executables`), so it does not trace them either;
``METAEDIT_COMPILATION_CACHE=0`` turns both off. Shipped data sets are kept encoded in
``$METAEDIT_CACHE/datasets`` (``METAEDIT_DATA_CACHE=0`` turns that off).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

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
    from metaedit.groupshift import GroupShiftError
    from metaedit.imputation import ImputationError
    from metaedit.nets import SpecError
    from metaedit.quickstart import QuickstartError
    from metaedit.requirements import RequirementError
    from metaedit.zoo import ZooError

    return (DatasetError, SpecError, ZooError, CheckpointError, LIDError, CertificateError, DomainError,
            EditorTrainingError, EditorError, RequirementError, QuickstartError, ContinualError, BoundError,
            GroupShiftError, ImputationError)


def use_caches() -> Callable[[], None]:
    """Turns on the command line's caches under ``$METAEDIT_CACHE`` (default ``~/.cache/metaedit``):
    JAX's persistent compilation cache (unless a directory was already chosen) and
    :mod:`metaedit.executables` (compiled programs kept whole, so that a second call does not even
    trace them), unless ``METAEDIT_COMPILATION_CACHE=0``; and the encoded shipped data sets
    (:mod:`metaedit.datasets.cache`), unless ``METAEDIT_DATA_CACHE=0``. Returns a function that
    turns the last two back to what they were (a command run in-process leaves them as it found them)."""
    from metaedit import executables
    from metaedit.datasets import cache

    before = executables.directory(), cache.directory()

    def restore() -> None:
        for module, directory in zip((executables, cache), before):
            if directory is None:
                module.disable()
            else:
                module.enable(directory)

    root = Path(os.environ.get("METAEDIT_CACHE", Path.home() / ".cache" / "metaedit"))
    if os.environ.get("METAEDIT_DATA_CACHE", "1") != "0":
        cache.enable(root / "datasets")
    if os.environ.get("METAEDIT_COMPILATION_CACHE", "1") == "0":
        return restore
    import jax

    executables.enable(root / "executables")
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(root / "jax"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return restore


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser(sys.argv[1:] if argv is None else argv).parse_args(argv)
    except SystemExit as stop:  # --help, or a usage error already printed
        return int(stop.code or 0)
    restore = use_caches()
    try:
        return args.run(args)
    except user_errors() as error:
        print(f"metaedit: error: {error}", file=sys.stderr)
        return 2
    finally:
        restore()


def entry() -> None:
    """The ``metaedit`` program: :func:`main`, then an immediate exit. Every file a command writes is
    complete when it returns (checkpoints are saved synchronously), so the interpreter's own
    teardown, which frees JAX's runtime and every module one by one (0.5 s), is skipped."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
