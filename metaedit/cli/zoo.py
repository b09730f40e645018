"""``metaedit zoo``, ``info`` and ``export``: train a population, describe it, take one network out."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from metaedit import datasets, nets, zoo
from metaedit.cli import flags
from metaedit.sharding import use_cpu_cores


def add_data_options(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--dataset`` or ``--csv`` with ``--label``, ``--sensitive`` and ``--categorical``."""
    source = parser.add_mutually_exclusive_group(required=required)
    source.add_argument("--dataset", choices=datasets.SHIPPED,
                        help="a data set that ships with the package (no default: give --dataset or --csv)")
    source.add_argument("--csv", help="your own CSV file with a header row, with --label (no default: give "
                                      "--dataset or --csv)")
    parser.add_argument("--label", help="label column of --csv, two values (no default: required with --csv)")
    parser.add_argument("--sensitive", help="sensitive attribute: adult sex or race, german sex or age, or a --csv "
                                            "column (each value a group); COLUMN=VALUE sets one group against the "
                                            "rest, e.g. race=Black (default: the data set's own)")
    parser.add_argument("--categorical", default="", help="comma-separated categorical columns of --csv (default: none)")


def load_data(args: argparse.Namespace) -> datasets.Dataset:
    """The data set that ``--dataset`` or ``--csv`` names."""
    return datasets.load_named(args.dataset, args.csv, args.label, args.sensitive,
                               [c for c in args.categorical.split(",") if c])


def _zoo_command(args: argparse.Namespace) -> int:
    if args.cpu_devices != 1:
        use_cpu_cores(args.cpu_devices or None)
    dataset = load_data(args)
    archs = list(dict.fromkeys(args.arch))
    specs = [nets.parse_arch(arch, dataset.input_shape, dataset.num_classes) for arch in archs]
    config = flags.config_from(args, zoo.ZooConfig)
    if len(specs) > 1:  # a mixed zoo: one zoo per architecture, seeds apart, and a manifest
        zoo.write_mixed_manifest(args.out, archs)
    for i, (arch, spec) in enumerate(zip(archs, specs)):
        workdir = args.out if len(specs) == 1 else str(Path(args.out) / zoo.arch_folder(arch))
        one = config if len(specs) == 1 else dataclasses.replace(config, seed=config.seed + 1000 * i)
        print(f"{dataset}; {nets.describe(spec)} with {nets.num_params(spec):,} parameters; "
              f"{one.members} members, {one.max_steps(len(dataset.y_train))} steps max", file=sys.stderr)
        zoo.train_zoo(spec, dataset, one, workdir=workdir, progress=args.progress)
        _print_info(summary(workdir), as_json=False)
    return 0


def summary(directory: str) -> dict:
    """Facts about the zoo in ``directory``, read from its newest checkpoint record (no arrays)."""
    record = zoo.read_zoo_record(directory)
    spec = nets.spec_from_dict(record["spec"])
    config = record["config"]
    facts = {
        "directory": str(directory), "complete": bool(record.get("complete")), "members": config["members"],
        "architecture": nets.describe(spec), "spec": record["spec"], "params_per_member": nets.num_params(spec),
        "dataset": record["dataset"], "seed": config["seed"], "epochs": config["epochs"],
    }
    if not facts["complete"]:
        facts["chunks_done"], facts["chunks"] = record.get("chunks_done"), record.get("chunks")
        return facts
    for part in ("train", "test"):
        accuracy = np.asarray(record["metrics"][f"{part}_accuracy"])
        facts.update({f"{part}_accuracy_mean": float(accuracy.mean()), f"{part}_accuracy_min": float(accuracy.min()),
                      f"{part}_accuracy_max": float(accuracy.max()), f"{part}_accuracy_std": float(accuracy.std())})
    facts["network_split"] = {k: len(v) for k, v in record["split"].items()}
    facts["train_seconds"] = record.get("train_seconds")
    return facts


def _print_info(facts: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(facts))
        return
    source = dict(facts["dataset"])
    name = source.pop("name")
    print(f"zoo {facts['directory']}")
    print(f"  dataset        {name} {source if source else ''}")
    print(f"  architecture   {facts['architecture']} ({facts['params_per_member']:,} parameters per member)")
    if not facts["complete"]:
        print(f"  members        {facts['members']}, unfinished: {facts['chunks_done']} of "
              f"{facts['chunks']} chunks (run the same 'metaedit zoo' command to resume)")
        return
    split = facts["network_split"]
    print(f"  members        {facts['members']} (networks: train {split['train']}, val {split['val']}, "
          f"test {split['test']})")
    for part in ("train", "test"):
        print(f"  {part} accuracy{' ' * (6 - len(part))} mean {facts[f'{part}_accuracy_mean']:.4f}  "
              f"min {facts[f'{part}_accuracy_min']:.4f}  max {facts[f'{part}_accuracy_max']:.4f}  "
              f"std {facts[f'{part}_accuracy_std']:.4f}")
    if facts.get("train_seconds") is not None:
        print(f"  training time  {facts['train_seconds']:.1f} s")


def _info_command(args: argparse.Namespace) -> int:
    _print_info(summary(args.directory), as_json=args.json)
    return 0


def member(directory: str, index: int) -> tuple[zoo.Zoo, nets.Params]:
    """A finished zoo and the params of its member ``index`` (a clear error when out of range)."""
    trained = zoo.load_zoo(directory)
    if not 0 <= index < trained.members:
        raise zoo.ZooError(f"--member {index} is outside the zoo's {trained.members} members")
    return trained, trained.member(index)


def _export_command(args: argparse.Namespace) -> int:
    trained, params = member(args.zoo, args.member)
    nets.save_params(args.out, trained.spec, params)
    print(f"wrote member {args.member} ({nets.describe(trained.spec)}) to {args.out}", file=sys.stderr)
    return 0


def register(commands) -> None:
    """Adds ``zoo``, ``info`` and ``export`` to the ``metaedit`` parser."""
    parser = commands.add_parser("zoo", help="train (or resume) a population of networks",
                                 description="Train a zoo of networks of one architecture, or resume or load it.")
    add_data_options(parser)
    parser.add_argument("--arch", required=True, nargs="+",
                        help="architecture: mlp:W1,W2,... or cnn:C1,C2,...; several make a mixed zoo, one zoo per "
                             "architecture in a sub-folder of --out, for one editor of them all (no default)")
    flags.add_options(parser, zoo.ZooConfig)
    parser.add_argument("--out", required=True, help="zoo directory (resumed if it holds an unfinished run)")
    parser.add_argument("--cpu-devices", type=int, default=0,
                        help="on a CPU, split it into this many XLA devices and shard the population over them "
                             "(default: 0, one per core; 1: a single device)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="show a progress bar (default: on)")
    parser.set_defaults(run=_zoo_command)

    parser = commands.add_parser("info", help="describe a zoo directory")
    parser.add_argument("directory", help="a zoo directory written by 'metaedit zoo'")
    parser.add_argument("--json", action="store_true", help="print one JSON object (default: a table)")
    parser.set_defaults(run=_info_command)

    parser = commands.add_parser("export", help="write one zoo member to a params file (.npz)")
    parser.add_argument("--zoo", required=True, help="a zoo directory")
    parser.add_argument("--member", type=int, required=True, help="index of the member to export")
    parser.add_argument("--out", required=True, help="the params file to write (.npz)")
    parser.set_defaults(run=_export_command)
