"""``metaedit lid`` and ``check``: certified locally invariant domains for a network, and checking them."""

from __future__ import annotations

import argparse
import json
import sys

from certify import guarantee, lid, store
from certify.certificates import CertificateError
from certify.solver import LIDConfig
from metaedit import datasets, nets, zoo
from metaedit.cli import flags
from metaedit.cli.zoo import member


def _network_and_data(args: argparse.Namespace):
    """(spec, params, dataset) from --zoo/--member or --params/--dataset."""
    if args.zoo:
        if args.params:
            raise zoo.ZooError("give either --zoo with --member, or --params with --dataset, not both")
        trained, params = member(args.zoo, args.member)
        return trained.spec, params, datasets.load_source(trained.dataset)
    if not (args.params and args.dataset):
        raise zoo.ZooError("name the network: --zoo DIR --member I, or --params FILE --dataset NAME")
    spec, params = nets.load_params(args.params)
    dataset = datasets.load_dataset(args.dataset)
    zoo.check_fits(spec, dataset)
    return spec, params, dataset


def _lid_command(args: argparse.Namespace) -> int:
    if not 0 < args.tau <= 1:
        raise CertificateError(f"--tau must lie in (0, 1], got {args.tau}")
    guarantee.check_guarantee(args.guarantee, args.confidence)
    config = flags.config_from(args, LIDConfig)
    spec, params, dataset = _network_and_data(args)
    n_test = len(dataset.y_test)
    cert, heldout = lid.default_sample_counts(n_test, args.cert_samples, args.heldout_samples)
    chosen = [f"{cert} certification samples" + ("" if args.cert_samples is not None else
                                                 " (default: min(4096, half))"),
              f"{heldout} held-out samples" + ("" if args.heldout_samples is not None else " (default: the rest)")]
    promise = (f"a {args.confidence:.0%} lower bound >= {args.tau} on new data" if args.guarantee == "distribution"
               else f">= {args.tau} on the certification samples")
    print(f"{nets.describe(spec)} on {dataset.name}: solving a {config.domain} LID ({config.bound} bounds) for "
          f"certified accuracy with {promise}, from {' and '.join(chosen)} of the {n_test} test rows "
          f"({config.steps} steps)", file=sys.stderr)
    found = lid.for_network(spec, params, dataset, args.tau, config, cert, heldout, config.seed, args.guarantee,
                            args.confidence, args.solve_margin)
    store.save_lids(args.out, spec, params, found.lids, dataset.source, found.cert_rows, found.heldout_rows,
                    config.margin_tol, bound=config.bound,
                    extra={"solve_seconds": found.seconds, "tau": args.tau, "frozen_parameters": found.frozen,
                           "solve_target": found.target})
    return _print_check(store.check(args.out, dataset=dataset), args.json)


def _check_command(args: argparse.Namespace) -> int:
    spec, params = nets.load_params(args.params) if args.params else (None, None)
    return _print_check(store.check(args.lid, params, spec), args.json)


def _print_check(summary: dict, as_json: bool) -> int:
    if as_json:
        print(json.dumps(summary))
        return 0
    print(f"LID {summary['lid']} ({summary['domain']}, {summary['architecture']}, {summary['lids']} certified LIDs)")
    print(f"  params inside            {summary['inside']}")
    print(f"  certified accuracy       {summary['certified_accuracy']:.4f} on {summary['cert_samples']} "
          f"samples (tau {summary['tau']}, holds: {summary['holds']})")
    print(f"  guarantee                {summary['guarantee']} ({summary['bound']} bounds; "
          f"{summary['frozen_parameters']} unexercised parameters frozen)")
    print(f"  held-out                 {summary['heldout_certified_accuracy']:.4f} on "
          f"{summary['heldout_samples']} samples; {summary['confidence']:.0%} lower bound "
          f"{summary['certified_accuracy_lower_bound']:.4f}")
    per_class = ", ".join("-" if v is None else f"{v:.3f}" for v in summary["heldout_per_class"])
    print(f"  held-out, per class      {per_class}")
    print(f"  size                     log-volume {summary['log_volume']:.1f}, mean log-width "
          f"{summary['mean_log_width']:.3f}")
    return 0


def register(commands) -> None:
    """Adds ``lid`` and ``check`` to the ``metaedit`` parser."""
    parser = commands.add_parser("lid", help="compute certified locally invariant domains for a network",
                                 description="Solve and certify LIDs in which the network keeps a certified "
                                             "accuracy of at least tau on samples of the test split.")
    parser.add_argument("--zoo", help="zoo directory, with --member (no default: give --zoo or --params)")
    parser.add_argument("--member", type=int, default=0, help="zoo member to certify (default: 0)")
    parser.add_argument("--params", help="a params file from 'metaedit export', with --dataset (no default: give "
                                         "--zoo or --params)")
    parser.add_argument("--dataset", choices=datasets.SHIPPED,
                        help="the data set of --params (no default: required with --params)")
    parser.add_argument("--tau", type=float, required=True, help="certified accuracy to keep, in (0, 1]")
    parser.add_argument("--guarantee", choices=guarantee.GUARANTEES, default="distribution",
                        help="distribution: the Clopper-Pearson lower bound on held-out rows is >= tau (the "
                             "held-out rows only pick the scale, by fixed-sequence testing); samples: the "
                             "certified accuracy on the certification samples is >= tau (default: distribution)")
    parser.add_argument("--confidence", type=float, default=0.95,
                        help="confidence of the held-out lower bound, in (0, 1) (default: 0.95)")
    parser.add_argument("--solve-margin", type=float, default=0.01,
                        help="with the distribution guarantee the solver aims this far above the held-out rate "
                             "that tau needs (default: 0.01)")
    parser.add_argument("--cert-samples", type=int,
                        help="certification samples from the test split (default: min(4096, half the test rows))")
    parser.add_argument("--heldout-samples", type=int,
                        help="held-out samples for the Clopper-Pearson bound (default: the other test rows)")
    flags.add_options(parser, LIDConfig)
    parser.add_argument("--out", required=True, help="directory to write the certified LIDs to")
    parser.add_argument("--json", action="store_true", help="print one JSON object (default: a table)")
    parser.set_defaults(run=_lid_command)

    parser = commands.add_parser("check", help="check params against a certified LID")
    parser.add_argument("--lid", required=True, help="a directory written by 'metaedit lid'")
    parser.add_argument("--params", help="params file to test for membership (default: the LID's own network)")
    parser.add_argument("--json", action="store_true", help="print one JSON object (default: a table)")
    parser.set_defaults(run=_check_command)
