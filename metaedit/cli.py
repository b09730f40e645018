"""The ``metaedit`` command line: a thin layer over the library.

    metaedit zoo --dataset adult --arch mlp:32,32 --members 512 --epochs 2 --seed 0 --out runs/adult-zoo
    metaedit zoo --csv data.csv --label y --sensitive group --categorical city,job --arch mlp:16 --out runs/mine
    metaedit info runs/adult-zoo [--json]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from metaedit import checkpoint, datasets, nets, zoo
from metaedit.sharding import use_cpu_cores


def _zoo_command(args: argparse.Namespace) -> int:
    if args.cpu_devices != 1:
        use_cpu_cores(args.cpu_devices or None)
    if args.csv:
        if not args.label:
            raise datasets.DatasetError("--csv needs --label (the target column)")
        categorical = [c for c in (args.categorical or "").split(",") if c]
        dataset = datasets.load_csv(args.csv, label=args.label, sensitive=args.sensitive,
                                    categorical=categorical)
    else:
        options = {"sensitive": args.sensitive} if args.sensitive else {}
        dataset = datasets.load_dataset(args.dataset, **options)
    spec = nets.parse_arch(args.arch, dataset.input_shape, dataset.num_classes)
    config = zoo.ZooConfig(
        members=args.members, epochs=args.epochs, batch_size=args.batch_size,
        chunk_steps=args.chunk_steps, seed=args.seed, learning_rate=tuple(args.lr),
    )
    print(f"{dataset}; {nets.describe(spec)} with {nets.num_params(spec):,} parameters; "
          f"{config.members} members, {config.max_steps(len(dataset.y_train))} steps max",
          file=sys.stderr)
    zoo.train_zoo(spec, dataset, config, workdir=args.out, progress=not args.no_progress)
    _print_info(_summary(args.out), as_json=False)
    return 0


def _summary(directory: str) -> dict:
    """Facts about the zoo in ``directory``, read from its newest checkpoint record (no arrays)."""
    step, record = checkpoint.read_record(directory)
    if record.get("format") != zoo.ZOO_FORMAT:
        raise checkpoint.CheckpointError(f"{directory} does not hold a metaedit zoo")
    spec = nets.spec_from_dict(record["spec"])
    config = record["config"]
    summary = {
        "directory": str(directory),
        "complete": bool(record.get("complete")),
        "members": config["members"],
        "architecture": nets.describe(spec),
        "spec": record["spec"],
        "params_per_member": nets.num_params(spec),
        "dataset": record["dataset"],
        "seed": config["seed"],
        "epochs": config["epochs"],
    }
    if not summary["complete"]:
        summary["chunks_done"], summary["chunks"] = record.get("chunks_done"), record.get("chunks")
        return summary
    for part in ("train", "test"):
        accuracy = np.asarray(record["metrics"][f"{part}_accuracy"])
        summary.update({
            f"{part}_accuracy_mean": float(accuracy.mean()),
            f"{part}_accuracy_min": float(accuracy.min()),
            f"{part}_accuracy_max": float(accuracy.max()),
            f"{part}_accuracy_std": float(accuracy.std()),
        })
    summary["network_split"] = {k: len(v) for k, v in record["split"].items()}
    summary["train_seconds"] = record.get("train_seconds")
    return summary


def _print_info(summary: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary))
        return
    source = dict(summary["dataset"])
    name = source.pop("name")
    print(f"zoo {summary['directory']}")
    print(f"  dataset        {name} {source if source else ''}")
    print(f"  architecture   {summary['architecture']} ({summary['params_per_member']:,} parameters per member)")
    if not summary["complete"]:
        print(f"  members        {summary['members']}, unfinished: {summary['chunks_done']} of "
              f"{summary['chunks']} chunks (run the same 'metaedit zoo' command to resume)")
        return
    split = summary["network_split"]
    print(f"  members        {summary['members']} (networks: train {split['train']}, val {split['val']}, "
          f"test {split['test']})")
    for part in ("train", "test"):
        print(f"  {part} accuracy{' ' * (6 - len(part))} mean {summary[f'{part}_accuracy_mean']:.4f}  "
              f"min {summary[f'{part}_accuracy_min']:.4f}  max {summary[f'{part}_accuracy_max']:.4f}  "
              f"std {summary[f'{part}_accuracy_std']:.4f}")
    if summary.get("train_seconds") is not None:
        print(f"  training time  {summary['train_seconds']:.1f} s")


def _info_command(args: argparse.Namespace) -> int:
    _print_info(_summary(args.directory), as_json=args.json)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metaedit", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    zoo_parser = commands.add_parser("zoo", help="train (or resume) a population of networks")
    source = zoo_parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", choices=sorted(n for n in datasets.LOADERS if n != "csv"))
    source.add_argument("--csv", help="a CSV file with a header row (use with --label)")
    zoo_parser.add_argument("--label", help="label column of --csv")
    zoo_parser.add_argument("--sensitive", help="sensitive attribute (adult: sex|race; german: sex|age; a --csv column)")
    zoo_parser.add_argument("--categorical", help="comma-separated categorical columns of --csv")
    zoo_parser.add_argument("--arch", required=True, help="mlp:W1,W2,... or cnn:C1,C2,...")
    zoo_parser.add_argument("--members", type=int, default=64)
    zoo_parser.add_argument("--epochs", type=float, default=2.0)
    zoo_parser.add_argument("--batch-size", type=int, default=128)
    zoo_parser.add_argument("--chunk-steps", type=int, default=100, help="steps between checkpoints")
    zoo_parser.add_argument("--lr", type=float, nargs=2, default=(1e-3, 1e-2), metavar=("MIN", "MAX"),
                            help="log-uniform learning-rate range")
    zoo_parser.add_argument("--seed", type=int, default=0)
    zoo_parser.add_argument("--out", required=True, help="zoo directory (resumed if it holds an unfinished run)")
    zoo_parser.add_argument("--cpu-devices", type=int, default=0,
                            help="on a CPU, split it into this many XLA devices and shard the population "
                                 "over them (default 0: one per core; 1: a single device)")
    zoo_parser.add_argument("--no-progress", action="store_true")
    zoo_parser.set_defaults(run=_zoo_command)

    info_parser = commands.add_parser("info", help="describe a zoo directory")
    info_parser.add_argument("directory")
    info_parser.add_argument("--json", action="store_true", help="print one JSON object")
    info_parser.set_defaults(run=_info_command)
    return parser


_USER_ERRORS = (datasets.DatasetError, nets.SpecError, zoo.ZooError, checkpoint.CheckpointError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except _USER_ERRORS as error:
        print(f"metaedit: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
