"""``metaedit train-editor``, ``evaluate`` and ``edit``: one editor per requirement, measured and used."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from metaedit import calibrate, compare, datasets, editor, gmn, nets, zoo
from metaedit.cli import flags
from metaedit.gmn import EditorError


def _train_editor_command(args: argparse.Namespace) -> int:
    zoos = zoo.load_zoos(args.zoo)  # one zoo, or one per architecture of a mixed zoo
    dataset = datasets.load_source(zoos[0].dataset)
    config = flags.config_from(args, editor.EditorTrainConfig)
    validated = all(len(z.split["val"]) for z in zoos)
    editor.train_editor([z.spec for z in zoos], [z.subset("train") for z in zoos], dataset, config, workdir=args.out,
                        progress=args.progress, identity={"zoo": str(Path(args.zoo).resolve())},
                        validation=[z.subset("val") for z in zoos] if validated else None)
    print(f"editor for {config.requirement} saved in {args.out}", file=sys.stderr)
    return 0


def _load(directory: str):
    """(editor, spec, dataset, requirement) of a trained editor directory."""
    trained_editor, record = editor.load_editor(directory)
    dataset = datasets.load_source(record["dataset"])
    return trained_editor, nets.spec_from_dict(record["spec"]), dataset, editor.trained_requirement(record, dataset)


def _readable(trained_editor: gmn.Editor, trained_spec: nets.Spec, spec: nets.Spec, what: str) -> nets.Spec:
    """``spec`` if the editor (trained on ``trained_spec``'s data) can read it, architectures it was
    not trained on included; else an EditorError that names ``what``."""
    if (spec.input_shape, spec.num_classes) != (trained_spec.input_shape, trained_spec.num_classes):
        raise EditorError(f"{what} holds {nets.describe(spec)} networks on inputs {spec.input_shape} with "
                          f"{spec.num_classes} classes; the editor was trained on {nets.describe(trained_spec)} "
                          f"networks on inputs {trained_spec.input_shape} with {trained_spec.num_classes}")
    try:
        trained_editor.config.check(spec)
    except EditorError as error:
        raise EditorError(f"{what}: {error}") from None
    return spec


def _evaluate_command(args: argparse.Namespace) -> int:
    trained_editor, spec, dataset, requirement = _load(args.editor)
    trained = zoo.load_zoo(args.zoo)
    spec = _readable(trained_editor, spec, trained.spec, f"the zoo {args.zoo}")
    target = requirement.default_target() if args.target is None else args.target
    rows = compare.evaluate_editor(trained_editor, spec, requirement, trained.subset("test"), dataset, args.lambdas,
                                   target, calibrated=args.auto)
    for row in rows:
        if args.json:
            print(json.dumps(row))
        else:
            print(f"lambda {row['lambda']}: compliant {row['compliance_rate']:.3f} at target {row['target']}, "
                  f"accuracy change {100 * row['accuracy_change']:+.2f} points, JSD {row['jsd']:.4f}, "
                  f"constant predictors {row['constant_fraction']:.0%}, {1e3 * row['seconds_per_edit']:.2f} ms per edit")
    return 0


def _edit_command(args: argparse.Namespace) -> int:
    trained_editor, spec, dataset, requirement = _load(args.editor)
    if args.lambda_ != "auto":
        editor.check_lambda(args.lambda_)
    params_spec, params = nets.load_params(args.params)
    spec = _readable(trained_editor, spec, params_spec, args.params)
    target = requirement.default_target() if args.target is None else requirement.check_target(args.target)
    if args.lambda_ == "auto":
        nets.validate_params(spec, params)
        chosen = calibrate.calibrate(trained_editor, spec, requirement, jax.tree.map(lambda a: a[None], params), target,
                                     calibrate.validation_rows(dataset))
        edited = jax.tree.map(lambda a: a[0], chosen.params)
        print(f"lambda auto: {float(chosen.lam[0])}, {requirement.name} {float(chosen.value[0]):.4f} on the validation "
              f"rows; " + ("it complies with target " if chosen.found[0] else
                           "NO lambda complies there; this is the most compliant edit, target ") + str(target),
              file=sys.stderr)
    else:
        cond = editor.condition(requirement, jnp.asarray(args.lambda_, jnp.float32), jnp.asarray(target, jnp.float32))
        edited = gmn.edit(trained_editor, spec, params, cond)
    nets.save_params(args.out, spec, {n: {k: np.asarray(v) for k, v in layer.items()} for n, layer in edited.items()})
    print(f"edited network written to {args.out}", file=sys.stderr)
    return 0


def _lambda(text: str) -> float | str:
    return "auto" if text == "auto" else float(text)


def register(commands) -> None:
    """Adds ``train-editor``, ``evaluate`` and ``edit`` to the ``metaedit`` parser."""
    parser = commands.add_parser("train-editor", help="train one editor for a requirement on a zoo",
                                 description="Train one editor for the whole accuracy/compliance trade-off on the "
                                             "zoo's training networks (checkpointed; a stopped run resumes).")
    parser.add_argument("--zoo", required=True, help="a zoo directory written by 'metaedit zoo' (a mixed zoo: one "
                                                     "editor for all its architectures)")
    flags.add_options(parser, editor.EditorTrainConfig, required=("requirement",))
    parser.add_argument("--out", required=True, help="editor directory (resumed if it holds an unfinished run)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="show a progress bar (default: on)")
    parser.set_defaults(run=_train_editor_command)

    parser = commands.add_parser("evaluate", help="evaluate an editor on a zoo's held-out networks")
    parser.add_argument("--editor", required=True, help="an editor directory written by 'metaedit train-editor'")
    parser.add_argument("--zoo", required=True, help="the zoo whose test networks are edited")
    parser.add_argument("--lambdas", type=flags.comma_list(float), default=(0.0, 0.25, 0.5, 0.75, 1.0),
                        help="comma-separated trade-off weights (default: 0,0.25,0.5,0.75,1)")
    parser.add_argument("--target", type=float, help="requirement target (default: the requirement's own: gap "
                                                      "0.05, sparsity 0.9, half the feature groups)")
    parser.add_argument("--auto", action=argparse.BooleanOptionalAction, default=True,
                        help="add the calibrated row, lambda 'auto': each network's least invasive edit that "
                             "complies on validation rows (default: on)")
    parser.add_argument("--json", action="store_true", help="one JSON object per lambda (default: one line each)")
    parser.set_defaults(run=_evaluate_command)

    parser = commands.add_parser("edit", help="edit one network (a params file) with a trained editor")
    parser.add_argument("--editor", required=True, help="an editor directory written by 'metaedit train-editor'")
    parser.add_argument("--params", required=True, help="the network to edit, a params file (.npz)")
    parser.add_argument("--lambda", dest="lambda_", type=_lambda, required=True,
                        help="trade-off weight in [0, 1] (0 keeps the network, 1 meets the requirement at any cost), "
                             "or 'auto': the least invasive edit that complies on validation rows")
    parser.add_argument("--target", type=float, help="requirement target (default: the requirement's own)")
    parser.add_argument("--out", required=True, help="the edited params file to write (.npz)")
    parser.set_defaults(run=_edit_command)
