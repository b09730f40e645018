"""Cost of one compliance edit: the editor against every baseline, warm against warm, side by side.

    python -m experiments.benchmarks.edit_cost [--members 256] [--networks 38]

A seeded Adult zoo (``mlp:32,32``) is trained; its first ``--networks`` members are edited by an
editor (its cost does not depend on its weights, so a freshly initialised one is timed), by the
editor's calibrated mode (``editor-calibrated``: every lambda of the calibration grid, measured on
the validation rows, the least invasive compliant edit kept), for the fairness gaps by the calibrated
group-shift edit (``group-shift``, :mod:`metaedit.groupshift`), for data minimisation by the
imputation edit (``imputation``, :mod:`metaedit.imputation`), and by every
baseline of every requirement at its default strength. Each method runs once to compile, then is
timed on a second, warm call (the baselines do this themselves: ``metaedit.baselines.timed``);
``first_call_seconds`` is the first call, compilation included. JSON lines: ``benchmark``
"edit_cost", ``impl`` (editor or the baseline), ``value`` in ms per network.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from experiments.benchmarks.common import emit, machine
from metaedit import calibrate, compare, datasets, editor, gmn, groupshift, imputation, nets, refit, requirements, zoo


def _timed(run) -> tuple[float, float]:
    """(first call seconds, warm call seconds) of ``run()`` (which must block until done)."""
    started = time.perf_counter()
    run()
    first = time.perf_counter() - started
    started = time.perf_counter()
    run()
    return first, time.perf_counter() - started


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=256, help="zoo size (default: 256)")
    parser.add_argument("--networks", type=int, default=38, help="networks edited (default: 38, the held-out "
                                                                  "split of a 256-member zoo)")
    parser.add_argument("--only", default="", help="comma-separated requirements (default: all with baselines)")
    args = parser.parse_args(argv)
    data = datasets.load_adult()
    spec = nets.parse_arch("mlp:32,32", data.input_shape, data.num_classes)
    trained = zoo.train_zoo(spec, data, zoo.ZooConfig(members=args.members, epochs=2, seed=0), progress=False)
    params = jax.tree.map(lambda leaf: np.asarray(leaf[: args.networks]), trained.params)
    count = nets.population_size(params)
    where = {"networks": count, "arch": nets.describe(spec), **machine()}
    names = [n for n in (args.only.split(",") if args.only else requirements.NAMES)]
    editor_config = gmn.GMNConfig.for_specs([spec])
    fresh = gmn.init_editor(editor_config, jax.random.key(0))
    rows = calibrate.validation_rows(data)
    for name in names:
        requirement = requirements.for_dataset(name, data)
        cond = editor.condition(requirement, np.float32(0.5), np.float32(requirement.default_target()))
        first, warm = _timed(lambda: jax.block_until_ready(gmn.edit(fresh, spec, params, cond)))
        emit("edit_cost", "editor", 1e3 * warm / count, "ms/network", requirement=name, first_call_seconds=first,
             **where)
        target = requirement.default_target()
        fields = {"requirement": name, **where}
        _emit_self_timed("editor-calibrated", lambda: calibrate.calibrate(fresh, spec, requirement, params, target, rows),
                         count, lambdas=len(calibrate.LAMBDAS), validation_rows=int(rows.y.shape[0]), **fields)
        if compare.group_shift_reason(spec, requirement, data) is None:
            _emit_self_timed("group-shift", lambda: groupshift.edit(spec, requirement, params, data, target, rows), count,
                             validation_rows=int(rows.y.shape[0]), candidates=groupshift.CANDIDATES, **fields)
        if compare.imputation_reason(spec, requirement) is None:
            _emit_self_timed("imputation", lambda: imputation.edit(spec, requirement, params, data, target), count,
                             rows=refit.ROWS, **fields)
        for baseline_name, baseline in requirement.baselines().items():
            strength = target if baseline.default_strength is None else baseline.default_strength
            strength = int(strength) if baseline.strength == "kept" else strength
            _emit_self_timed(baseline_name, lambda: baseline.run(spec, params, data, strength), count,
                             family=baseline.family, strength=strength, **fields)


def _emit_self_timed(impl: str, run, count: int, **fields) -> None:
    """Emits the warm ms per network of ``run()``, which times itself (a warm call after one that
    compiles) and returns ``seconds_per_edit``; ``first_call_seconds``: the rest of its wall time."""
    started = time.perf_counter()
    result = run()
    first = time.perf_counter() - started - result.seconds_per_edit * count
    emit("edit_cost", impl, 1e3 * result.seconds_per_edit, "ms/network", first_call_seconds=first, **fields)


if __name__ == "__main__":
    main()
