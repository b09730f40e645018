"""The ``metaedit`` command line: a thin layer over the library.

    metaedit zoo --dataset adult --arch mlp:32,32 --members 512 --epochs 2 --seed 0 --out runs/adult-zoo
    metaedit zoo --csv data.csv --label y --sensitive group --categorical city,job --arch mlp:16 --out runs/mine
    metaedit info runs/adult-zoo [--json]
    metaedit export --zoo runs/adult-zoo --member 3 --out member3.npz
    metaedit lid --zoo runs/adult-zoo --member 3 --tau 0.8 --domain box --out runs/lid-box
    metaedit check --lid runs/lid-box [--params member3.npz] [--json]
    metaedit train-editor --zoo runs/adult-zoo --requirement pruning --steps 400 --out runs/editor-pruning
    metaedit evaluate --editor runs/editor-pruning --zoo runs/adult-zoo [--json]
    metaedit edit --editor runs/editor-pruning --params member3.npz --lambda 0.5 --out edited.npz
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from metaedit import checkpoint, datasets, nets, requirements, zoo
from metaedit.gmn import EditorError
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


def _network_and_data(args: argparse.Namespace):
    """(spec, params, dataset) from --zoo/--member or --params/--dataset."""
    if args.zoo:
        if args.params:
            raise zoo.ZooError("give either --zoo with --member, or --params with --dataset, not both")
        trained = zoo.load_zoo(args.zoo)
        if not 0 <= args.member < trained.members:
            raise zoo.ZooError(f"--member {args.member} is outside the zoo's {trained.members} members")
        return trained.spec, trained.member(args.member), datasets.load_source(trained.dataset)
    if not (args.params and args.dataset):
        raise zoo.ZooError("name the network: --zoo DIR --member I, or --params FILE --dataset NAME")
    spec, params = nets.load_params(args.params)
    dataset = datasets.load_dataset(args.dataset)
    zoo.check_fits(spec, dataset)
    return spec, params, dataset


def _lid_command(args: argparse.Namespace) -> int:
    from certify import lid, pipeline, store

    spec, params, dataset = _network_and_data(args)
    config = lid.LIDConfig(domain=args.domain, rank=args.rank, steps=args.steps, seed=args.seed)
    if not 0 < args.tau <= 1:
        raise lid.LIDError(f"--tau must lie in (0, 1], got {args.tau}")
    print(f"{nets.describe(spec)} on {dataset.name}: solving a {args.domain} LID for certified accuracy "
          f">= {args.tau} on {args.cert_samples} samples ({args.steps} steps)", file=sys.stderr)
    result = pipeline.lids_for_network(spec, params, dataset, args.tau, config, args.cert_samples,
                                       args.heldout_samples, args.seed)
    store.save_lids(args.out, spec, params, result["lids"], args.domain, dataset.source,
                    result["cert_rows"], result["heldout_rows"],
                    extra={"solve_seconds": result["seconds"], "tau": args.tau})
    return _check_command(argparse.Namespace(lid=args.out, params=None, json=args.json))


def _check_command(args: argparse.Namespace) -> int:
    from certify import domains, project, store

    stored = store.load_lids(args.lid)
    best = stored.domains[0]
    if args.params:
        spec, params = nets.load_params(args.params)
        if spec != stored.spec:
            raise nets.SpecError(f"{args.params} is a {nets.describe(spec)} network; the LID is for "
                                 f"{nets.describe(stored.spec)}")
    else:
        params = stored.params
    dataset = datasets.load_source(stored.record["dataset"])
    cert_rows = np.asarray(stored.record["cert_rows"])
    heldout_rows = np.asarray(stored.record["heldout_rows"])
    certificates = store.certify_again(stored, 0, dataset.x_test[cert_rows], dataset.y_test[cert_rows],
                                       dataset.x_test[heldout_rows], dataset.y_test[heldout_rows])
    first = certificates[0]
    summary = {
        "lid": str(args.lid),
        "domain": stored.record["domain"],
        "architecture": nets.describe(stored.spec),
        "inside": project.contains(best, params, rtol=1e-6),
        "tau": first.tau,
        "certified_accuracy": first.certified_accuracy,
        "certified_accuracy_lower_bound": first.lower_bound,
        "heldout_certified_accuracy": first.heldout_certified_accuracy,
        "confidence": first.confidence,
        "cert_samples": len(cert_rows),
        "heldout_samples": len(heldout_rows),
        "log_volume": float(domains.log_volume(best)),
        "mean_log_width": float(domains.mean_log_width(best)),
        "lids": len(stored.domains),
        "holds": all(c.holds for c in certificates),
        "solve_seconds": stored.record.get("solve_seconds"),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"LID {summary['lid']} ({summary['domain']}, {summary['architecture']}, {summary['lids']} certified LIDs)")
        print(f"  params inside            {summary['inside']}")
        print(f"  certified accuracy       {summary['certified_accuracy']:.4f} on {summary['cert_samples']} "
              f"samples (tau {summary['tau']}, holds: {summary['holds']})")
        print(f"  held-out                 {summary['heldout_certified_accuracy']:.4f} on "
              f"{summary['heldout_samples']} samples; {summary['confidence']:.0%} lower bound "
              f"{summary['certified_accuracy_lower_bound']:.4f}")
        print(f"  size                     log-volume {summary['log_volume']:.1f}, mean log-width "
              f"{summary['mean_log_width']:.3f}")
    return 0


def _export_command(args: argparse.Namespace) -> int:
    trained = zoo.load_zoo(args.zoo)
    if not 0 <= args.member < trained.members:
        raise zoo.ZooError(f"--member {args.member} is outside the zoo's {trained.members} members")
    nets.save_params(args.out, trained.spec, trained.member(args.member))
    print(f"wrote member {args.member} ({nets.describe(trained.spec)}) to {args.out}", file=sys.stderr)
    return 0


def _train_editor_command(args: argparse.Namespace) -> int:
    from metaedit import editor

    trained = zoo.load_zoo(args.zoo)
    dataset = datasets.load_source(trained.dataset)
    margin = editor.default_safety_margin(args.requirement) if args.safety_margin is None else args.safety_margin
    config = editor.EditorTrainConfig(requirement=args.requirement, steps=args.steps, chunk_steps=args.chunk_steps,
                                      networks_per_step=args.networks_per_step, seed=args.seed, safety_margin=margin)
    editor.train_editor(trained.spec, trained.subset("train"), dataset, config, workdir=args.out,
                        progress=not args.no_progress, identity={"zoo": str(Path(args.zoo).resolve())})
    print(f"editor for {args.requirement} saved in {args.out}", file=sys.stderr)
    return 0


def _editor_and_requirement(directory: str):
    from metaedit import editor, requirements

    trained_editor, record = editor.load_editor(directory)
    spec = nets.spec_from_dict(record["spec"])
    dataset = datasets.load_source(record["dataset"])
    requirement = requirements.get(record["config"]["requirement"], dataset.feature_groups)
    return trained_editor, record, spec, dataset, requirement


def _evaluate_command(args: argparse.Namespace) -> int:
    from metaedit import editor

    trained_editor, record, spec, dataset, requirement = _editor_and_requirement(args.editor)
    trained = zoo.load_zoo(args.zoo)
    if trained.spec != spec:
        raise EditorError(f"the editor was trained on {nets.describe(spec)} networks; the zoo holds "
                        f"{nets.describe(trained.spec)}")
    target = args.target if args.target is not None else editor.default_target(requirement, dataset.feature_groups)
    lambdas = [float(v) for v in args.lambdas.split(",")]
    rows = editor.evaluate_editor(trained_editor, spec, requirement, trained.subset("test"), dataset, lambdas, target)
    for row in rows:
        if args.json:
            print(json.dumps(row))
        else:
            print(f"lambda {row['lambda']:.2f}: compliant {row['compliance_rate']:.3f} at target {row['target']}, "
                  f"accuracy change {100 * row['accuracy_change']:+.2f} points, JSD {row['jsd']:.4f}, "
                  f"{1e3 * row['seconds_per_edit']:.2f} ms per edit")
    return 0


def _edit_command(args: argparse.Namespace) -> int:
    from metaedit import editor, gmn

    trained_editor, record, spec, dataset, requirement = _editor_and_requirement(args.editor)
    editor.check_lambda(args.lambda_)
    params_spec, params = nets.load_params(args.params)
    if params_spec != spec:
        raise EditorError(f"{args.params} is a {nets.describe(params_spec)} network; the editor edits {nets.describe(spec)}")
    target = args.target if args.target is not None else editor.default_target(requirement, dataset.feature_groups)
    import jax.numpy as jnp

    cond = editor.condition(requirement, jnp.asarray(args.lambda_, jnp.float32), jnp.asarray(target, jnp.float32))
    edited = gmn.edit(trained_editor, spec, params, cond)
    nets.save_params(args.out, spec, {n: {k: np.asarray(v) for k, v in layer.items()} for n, layer in edited.items()})
    print(f"edited network written to {args.out}", file=sys.stderr)
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

    export_parser = commands.add_parser("export", help="write one zoo member to a params file (.npz)")
    export_parser.add_argument("--zoo", required=True)
    export_parser.add_argument("--member", type=int, required=True)
    export_parser.add_argument("--out", required=True)
    export_parser.set_defaults(run=_export_command)

    lid_parser = commands.add_parser("lid", help="compute certified locally invariant domains for a network")
    lid_parser.add_argument("--zoo", help="zoo directory (with --member)")
    lid_parser.add_argument("--member", type=int, default=0)
    lid_parser.add_argument("--params", help="a params file from 'metaedit export' (with --dataset)")
    lid_parser.add_argument("--dataset", choices=sorted(n for n in datasets.LOADERS if n != "csv"))
    lid_parser.add_argument("--tau", type=float, required=True, help="certified accuracy to keep, in (0, 1]")
    lid_parser.add_argument("--domain", choices=("box", "zonotope"), default="box")
    lid_parser.add_argument("--rank", type=int, default=4, help="zonotope generators")
    lid_parser.add_argument("--steps", type=int, default=300)
    lid_parser.add_argument("--cert-samples", type=int, default=512)
    lid_parser.add_argument("--heldout-samples", type=int, default=2000)
    lid_parser.add_argument("--seed", type=int, default=0)
    lid_parser.add_argument("--out", required=True)
    lid_parser.add_argument("--json", action="store_true")
    lid_parser.set_defaults(run=_lid_command)

    check_parser = commands.add_parser("check", help="check params against a certified LID")
    check_parser.add_argument("--lid", required=True)
    check_parser.add_argument("--params", help="params file to test for membership (default: the LID's own network)")
    check_parser.add_argument("--json", action="store_true")
    check_parser.set_defaults(run=_check_command)

    train_parser = commands.add_parser("train-editor", help="train one editor for a requirement on a zoo")
    train_parser.add_argument("--zoo", required=True)
    train_parser.add_argument("--requirement", required=True, choices=requirements.NAMES)
    train_parser.add_argument("--steps", type=int, default=1000)
    train_parser.add_argument("--chunk-steps", type=int, default=100)
    train_parser.add_argument("--networks-per-step", type=int, default=8)
    train_parser.add_argument("--safety-margin", type=float,
                              help="train against a target this much stricter (default: 0.02 for the fairness gaps, else 0)")
    train_parser.add_argument("--seed", type=int, default=0)
    train_parser.add_argument("--out", required=True)
    train_parser.add_argument("--no-progress", action="store_true")
    train_parser.set_defaults(run=_train_editor_command)

    evaluate_parser = commands.add_parser("evaluate", help="evaluate an editor on a zoo's held-out networks")
    evaluate_parser.add_argument("--editor", required=True)
    evaluate_parser.add_argument("--zoo", required=True)
    evaluate_parser.add_argument("--lambdas", default="0,0.25,0.5,0.75,1")
    evaluate_parser.add_argument("--target", type=float, help="requirement target (default: 0.05 gap, 0.9 sparsity, half the groups)")
    evaluate_parser.add_argument("--json", action="store_true", help="one JSON object per lambda")
    evaluate_parser.set_defaults(run=_evaluate_command)

    edit_parser = commands.add_parser("edit", help="edit one network (a params file) with a trained editor")
    edit_parser.add_argument("--editor", required=True)
    edit_parser.add_argument("--params", required=True)
    edit_parser.add_argument("--lambda", dest="lambda_", type=float, required=True)
    edit_parser.add_argument("--target", type=float)
    edit_parser.add_argument("--out", required=True)
    edit_parser.set_defaults(run=_edit_command)
    return parser


def _user_errors() -> tuple:
    from certify import domains, lid, specs
    from metaedit import editor, gmn, requirements

    return (datasets.DatasetError, nets.SpecError, zoo.ZooError, checkpoint.CheckpointError,
            lid.LIDError, specs.SpecError, domains.DomainError, editor.EditorTrainingError,
            gmn.EditorError, requirements.RequirementError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except _user_errors() as error:
        print(f"metaedit: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
