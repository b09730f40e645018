"""LIDs for one trained network on a data set: sample selection, solving and certification in one call.

Certification samples and held-out samples are disjoint rows of the data set's test split, drawn
from ``seed``. A zonotope LID is solved from the best certified box LID (the same solver run first),
so it starts as that box and is kept only where it certifies something larger.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax.numpy as jnp
import numpy as np

from certify import lid, specs
from metaedit import nets
from metaedit.datasets import Dataset


def certification_rows(n_test: int, cert_samples: int, heldout_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint seeded rows of the test split: (certification rows, held-out rows)."""
    if cert_samples < 1 or heldout_samples < 1:
        raise specs.SpecError("cert_samples and heldout_samples must both be >= 1")
    if cert_samples + heldout_samples > n_test:
        raise specs.SpecError(
            f"{cert_samples} certification + {heldout_samples} held-out samples exceed the {n_test} test rows")
    order = np.random.default_rng([seed, 7]).permutation(n_test)
    return np.sort(order[:cert_samples]), np.sort(order[cert_samples:cert_samples + heldout_samples])


def lids_for_network(spec: nets.Spec, params: Any, dataset: Dataset, tau: float, config: lid.LIDConfig,
                     cert_samples: int = 512, heldout_samples: int = 2000, seed: int = 0,
                     confidence: float = 0.95) -> dict:
    """Certified LIDs of ``config.domain`` for one network with ``certified accuracy >= tau``.

    Returns a dict: ``lids`` (certified, one per snapshot), ``best``, ``cert_rows``, ``heldout_rows``,
    ``seconds`` (solve + certify wall time, the box included) and, for a zonotope, ``box`` (the best
    box LID it started from), ``box_lids`` and ``box_seconds``.
    """
    nets.validate_params(spec, params)
    cert_rows, heldout_rows = certification_rows(len(dataset.y_test), cert_samples, heldout_samples, seed)
    x, y = jnp.asarray(dataset.x_test), jnp.asarray(dataset.y_test)
    constraint = specs.Constraint(x[cert_rows], y[cert_rows], float(tau))
    heldout = [(x[heldout_rows], y[heldout_rows])]
    params = {n: {k: jnp.asarray(v) for k, v in layer.items()} for n, layer in params.items()}
    started = time.perf_counter()
    out: dict = {"cert_rows": cert_rows, "heldout_rows": heldout_rows}
    start = None
    if config.domain == "zonotope":
        box_lids, _ = lid.compute(spec, params, [constraint], heldout, dataclasses.replace(config, domain="box"))
        out["box"], out["box_lids"] = lid.best(box_lids), box_lids
        out["box_seconds"] = time.perf_counter() - started
        start = out["box"].domain
    lids, _ = lid.compute(spec, params, [constraint], heldout, config, start=start)
    out["seconds"] = time.perf_counter() - started
    out["lids"], out["best"] = lids, lid.best(lids)
    return out
