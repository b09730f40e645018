"""Audit a saved LID by running the real network: sampled parameter vectors and a per-sample attack.

    python -m experiments.audit --lid runs/lid-box [--samples 100000] [--float64] [--out audit.json]

Loads the LID that ``metaedit lid`` wrote and takes every certification and held-out row that is
certified, as issued (float32) or by the same bound recomputed in float64 when asked (rounding
tolerance 1e-9); then, running the network in that precision, it looks for a counterexample:
``--samples`` parameter vectors drawn in the
domain (half uniform in its symbols, half vertices) and, for every certified row, projected gradient
descent on that row's margin inside the domain (:mod:`certify.audit`). Prints one JSON object; any
``violations`` would mean a bound is unsound.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from certify import audit, certificates, store
from metaedit.datasets import load_source


def run(directory: str, samples: int, float64: bool, attack_steps: int, seed: int = 0) -> dict:
    stored = store.load_lids(directory)
    record = stored.record
    dataset = load_source(record["dataset"])
    rows = np.concatenate([np.asarray(record["cert_rows"]), np.asarray(record["heldout_rows"])])
    dtype = jnp.float64 if float64 else jnp.float32
    bound = record.get("bound", "interval")
    issued = np.asarray(certificates.certified(stored.spec, stored.domains[0], jnp.asarray(dataset.x_test[rows]),
                                               jnp.asarray(dataset.y_test[rows]), record.get("margin_tol"), bound))
    with jax.enable_x64(float64):
        domain = jax.tree.map(lambda v: jnp.asarray(v, dtype), stored.domains[0])
        x, y = jnp.asarray(dataset.x_test[rows], dtype), jnp.asarray(dataset.y_test[rows])
        started = time.perf_counter()
        again = np.asarray(certificates.certified(stored.spec, domain, x, y, bound=bound))
        hits = issued | again  # certified as issued (float32), or by the bound in this dtype
        found = audit.audit_certified(stored.spec, domain, x, y, hits, samples // 2, jax.random.key(seed),
                                      jax.random.key(seed + 1), attack_steps)
    return {
        "lid": directory, "dtype": "float64" if float64 else "float32", "bound": record.get("bound", "interval"),
        "rows": len(rows), "certified_rows": int(hits.sum()), "certified_as_issued": int(issued.sum()),
        "certified_in_this_dtype": int(again.sum()), "sampled_parameter_vectors": 2 * (samples // 2),
        **found._asdict(), "violations": found.violations, "seconds": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lid", required=True, help="a directory written by 'metaedit lid'")
    parser.add_argument("--samples", type=int, default=100_000, help="parameter vectors, half of them vertices "
                                                                      "(default: 100000)")
    parser.add_argument("--float64", action="store_true", help="audit in float64 (default: float32)")
    parser.add_argument("--attack-steps", type=int, default=40, help="gradient steps per attack start (default: 40)")
    parser.add_argument("--out", help="also write the JSON object to this file")
    args = parser.parse_args(argv)
    found = run(args.lid, args.samples, args.float64, args.attack_steps)
    print(json.dumps(found))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(found, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
