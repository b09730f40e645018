"""``metaedit train-editor``, ``evaluate`` and ``edit``: one editor per requirement, measured and used."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import numpy as np

from certify import guarantee
from certify.bounds import BOUNDS
from certify.certificates import CertificateError
from certify.solver import LIDConfig, LIDError
from metaedit import calibrate, certified, compare, datasets, editor, gmn, groupshift, imputation, nets, refit, zoo
from metaedit.baselines import split_batch
from metaedit.cli import flags
from metaedit.gmn import EditorError
from metaedit.requirements import Gap


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
                                   target, calibrated=args.auto, group_shift=args.group_shift,
                                   imputed=args.imputation, refitted=args.refit)
    if args.group_shift and isinstance(requirement, Gap) and not any(r["method"] == "group_shift" for r in rows):
        print(f"no group-shift row: {compare.group_shift_reason(spec, requirement, dataset)}", file=sys.stderr)
    for row in rows:
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{row['method']}, lambda {row['lambda']}: compliant {row['compliance_rate']:.3f} at target {row['target']}, "
                  f"accuracy change {100 * row['accuracy_change']:+.2f} points, JSD {row['jsd']:.4f}, "
                  f"constant predictors {row['constant_fraction']:.0%}, {1e3 * row['seconds_per_edit']:.2f} ms per edit")
    return 0


def _edit_command(args: argparse.Namespace) -> int:
    if args.group_shift and args.imputation:
        raise EditorError("--group-shift and --imputation are two different edits: choose one")
    if args.group_shift or args.imputation:
        flag = "--group-shift" if args.group_shift else "--imputation"
        if args.lambda_ is not None or args.certify:
            raise EditorError(f"{flag} is an edit of its own, chosen on data: leave out --lambda and --certify")
    elif args.lambda_ is None:
        raise EditorError("--lambda is required (a trade-off weight in [0, 1] or 'auto'), unless --group-shift or "
                          "--imputation")
    if args.refit and (args.group_shift or args.imputation or args.certify):
        raise EditorError("--refit follows the editor's plain edit: leave out --group-shift, --imputation and --certify")
    if args.certify:
        if args.tau is None:
            raise CertificateError("--certify needs --tau, the held-out lower bound to keep on accuracy")
        certified.check_tau(args.tau)
        args.confidence = 0.95 if args.confidence is None else args.confidence
        guarantee.check_guarantee("distribution", args.confidence)
        args.lid_out = args.lid_out or str(Path(args.out).with_suffix("")) + ".lid"
        if Path(args.lid_out).exists():
            raise CertificateError(f"{args.lid_out} exists: remove it, or name another LID directory with --lid-out")
    else:
        given = [f for f in ("tau", "confidence", "bound", "lid_out") if getattr(args, f) is not None]
        if given:
            raise CertificateError(f"--{given[0].replace('_', '-')} is for --certify: add --certify, or leave it out")
    if Path(args.out).is_dir():
        raise CertificateError(f"--out {args.out} is a directory: name the params file (.npz) to write")
    trained_editor, spec, dataset, requirement = _load(args.editor)
    if args.lambda_ not in (None, "auto"):
        editor.check_lambda(args.lambda_)
    params_spec, params = nets.load_params(args.params)
    spec = _readable(trained_editor, spec, params_spec, args.params)
    target = requirement.default_target() if args.target is None else requirement.check_target(args.target)
    nets.validate_params(spec, params)
    if args.certify:
        return _certified_edit(args, trained_editor, spec, requirement, params, dataset, target)
    if args.group_shift:
        return _group_shift_edit(args, spec, requirement, params, dataset, target)
    if args.imputation:
        return _imputation_edit(args, spec, requirement, params, dataset, target)
    if args.refit and compare.refit_reason(requirement):
        raise EditorError(f"--refit: {compare.refit_reason(requirement)}")
    edited, lam, found = certified.edit_network(trained_editor, spec, requirement, params, args.lambda_, target,
                                                dataset)
    if args.refit:
        edited = _first(refit.refit_edits(spec, _stacked(params), _stacked(edited), dataset,
                                          compare.refit_masked_layers(requirement))[0])
    if found is not None:
        print(f"lambda auto: {lam}; " + ("it complies with target " if found else "NO lambda complies on the "
                                         "validation rows; this is the most compliant edit, target ") + str(target),
              file=sys.stderr)
    return _write_edit(args, spec, requirement, target, params, edited, dataset, lam, refit=bool(args.refit))


def _group_shift_edit(args, spec, requirement, params, dataset, target) -> int:
    shifted = groupshift.edit(spec, requirement, _stacked(params), dataset, target, calibrate.validation_rows(dataset))
    found = bool(shifted.found[0])
    print("group shift: " + ("it complies with target " if found else "NO shift complies on the validation rows; "
                             "this is the most compliant one, target ") + str(target), file=sys.stderr)
    return _write_edit(args, spec, requirement, target, params, _first(shifted.params), dataset, "group-shift",
                       shifts=[round(float(v), 6) for v in shifted.shifts[0]], found=found)


def _imputation_edit(args, spec, requirement, params, dataset, target) -> int:
    imputed = imputation.edit(spec, requirement, _stacked(params), dataset, target)
    return _write_edit(args, spec, requirement, target, params, _first(imputed.params), dataset, "imputation",
                       kept_groups=[i for i, on in enumerate(imputed.kept[0]) if on])


def _stacked(params):
    """One network's params as a population of one [1, ...]."""
    return jax.tree.map(lambda a: np.asarray(a)[None], params)


def _first(params):
    """The first network of a population [P, ...]."""
    return jax.tree.map(lambda a: a[0], params)


def _write_edit(args, spec, requirement, target, params, edited, dataset, lam, **extra) -> int:
    """Writes the edited network to ``--out`` and prints its summary (``lambda``, ``extra``, the
    requirement, target and outcome on the test split against the original ``params``)."""
    _save_params(args.out, spec, edited)
    summary = {"lambda": lam, **extra, "requirement": requirement.name, "target": target,
               **certified.outcome(spec, requirement, target, edited, params, split_batch(dataset, "test")),
               "out": args.out}
    _print_edit(summary, args.json)
    return 0


def _certified_edit(args, trained_editor, spec, requirement, params, dataset, target) -> int:
    lid_dir, bound = args.lid_out, args.bound or "interval"
    print(f"certified edit: editing at lambda {args.lambda_}, then a box LID ({bound} bounds) whose "
          f"{args.confidence:.0%} held-out lower bound on accuracy is >= {args.tau}", file=sys.stderr)
    config = LIDConfig(bound=bound)
    result = certified.certified_edit(trained_editor, spec, requirement, params, dataset, args.lambda_, args.tau,
                                      target, config, args.confidence)
    if not result.certified:
        raise LIDError(f"no LID certifies the edit (lambda {result.lam}, test accuracy {result.accuracy:.4f}, "
                       f"{requirement.name} {result.value:.4f}): {result.message}")
    if not result.compliant:
        print(f"the certified edit does NOT meet the requirement on the test split: {requirement.name} "
              f"{result.value:.4f}, target {target} (try another --lambda)", file=sys.stderr)
    certified.save(lid_dir, spec, result, dataset, config.margin_tol, extra={"requirement": requirement.name})
    _save_params(args.out, spec, result.params)
    summary = {**result.row(), "requirement": requirement.name, "target": target, "lid": lid_dir, "out": args.out}
    _print_edit(summary, args.json)
    return 0


def _save_params(path: str, spec: nets.Spec, params) -> None:
    nets.save_params(path, spec, {n: {k: np.asarray(v) for k, v in layer.items()} for n, layer in params.items()})
    print(f"edited network written to {path}", file=sys.stderr)


def _print_edit(summary: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary))
        return
    print(f"lambda {summary['lambda']}: {summary['requirement']} {summary['requirement_value']:.4f} (target "
          f"{summary['target']}, compliant: {summary['compliant']}), accuracy change "
          f"{100 * summary['accuracy_change']:+.2f} points")
    if "lid" in summary:
        print(f"certified ({summary['resolution']}): {summary['confidence']:.0%} held-out lower bound on accuracy "
              f"{summary['certified_accuracy_lower_bound']:.4f} >= tau {summary['tau']}; LID in {summary['lid']}")


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
    parser.add_argument("--group-shift", action=argparse.BooleanOptionalAction, default=True,
                        help="for a fairness gap on an MLP that reads the sensitive attribute: add the row of the "
                             "calibrated group-shift edit (method group_shift; a per-group shift of the decision "
                             "written into the weights, not the metanetwork's edit) (default: on)")
    parser.add_argument("--imputation", action=argparse.BooleanOptionalAction, default=True,
                        help="for data minimisation on an MLP: add the row of the imputation edit (method "
                             "imputation; dropped groups replaced by their linear prediction from the kept ones, "
                             "folded into the weights, not the metanetwork's edit) (default: on)")
    parser.add_argument("--refit", action=argparse.BooleanOptionalAction, default=True,
                        help="for pruning (MLP or CNN) and data minimisation: after each lambda's row, the same edits "
                             "refit layer-wise to the original networks on their own zeros (method editor+refit; "
                             "least squares on training rows) (default: on)")
    parser.add_argument("--json", action="store_true", help="one JSON object per row (default: one line each)")
    parser.set_defaults(run=_evaluate_command)

    parser = commands.add_parser("edit", help="edit one network (a params file) with a trained editor")
    parser.add_argument("--editor", required=True, help="an editor directory written by 'metaedit train-editor'")
    parser.add_argument("--params", required=True, help="the network to edit, a params file (.npz)")
    parser.add_argument("--lambda", dest="lambda_", type=_lambda,
                        help="trade-off weight in [0, 1] (0 keeps the network, 1 meets the requirement at any cost), "
                             "or 'auto': the least invasive edit that complies on validation rows (no default: "
                             "required unless --group-shift or --imputation)")
    parser.add_argument("--group-shift", action="store_true",
                        help="for a fairness gap on an MLP that reads the sensitive attribute: instead of the "
                             "metanetwork's edit, the calibrated group-shift edit (per-group shifts of the decision "
                             "chosen on validation rows, written into the weights; the editor gives the data set and "
                             "the requirement) (default: off)")
    parser.add_argument("--imputation", action="store_true",
                        help="for data minimisation on an MLP: instead of the metanetwork's edit, the imputation "
                             "edit (the groups to drop chosen per network; their best linear prediction from the "
                             "kept groups folded into the first layer, later layers refit on training rows; the "
                             "editor gives the data set and the requirement) (default: off)")
    parser.add_argument("--refit", action="store_true",
                        help="for pruning (MLP or CNN) and data minimisation: refit the editor's edit layer-wise to the "
                             "original network on its own zeros (least squares on training rows; every zero stays) "
                             "(default: off)")
    parser.add_argument("--target", type=float, help="requirement target (default: the requirement's own)")
    parser.add_argument("--out", required=True, help="the edited params file to write (.npz)")
    parser.add_argument("--certify", action="store_true",
                        help="certify the edit: a box LID around it, with the edit's zeros held at zero, whose "
                             "held-out lower bound on accuracy is >= --tau; written beside --out (see --lid-out) "
                             "(default: off, the plain edit)")
    parser.add_argument("--tau", type=float, help="with --certify: the accuracy to guarantee, in (0, 1] (no default)")
    parser.add_argument("--confidence", type=float,
                        help="with --certify: confidence of the held-out lower bound, in (0, 1) (default: 0.95)")
    parser.add_argument("--bound", choices=BOUNDS, help="with --certify: bound propagation (default: interval)")
    parser.add_argument("--lid-out", help="with --certify: the LID directory (default: --out without its suffix, "
                                          "plus .lid)")
    parser.add_argument("--json", action="store_true", help="print one JSON object with the requirement's value, "
                                                            "compliance and accuracy change (default: a line or two)")
    parser.set_defaults(run=_edit_command)
