"""Saving and loading certified LIDs (through :mod:`metaedit.checkpoint`, so bad files fail clearly).

A LID directory holds the network's params, every certified LID (the best first) and a record with
the architecture, the domain kind, the data set, the indices of the certification and held-out
samples (rows of the test split), each constraint's tau, and each LID's certificate and size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from certify import domains
from certify.domains import Box, Zonotope
from metaedit import checkpoint, nets

LID_FORMAT = "certify-lid/1"


class StoredLIDs(NamedTuple):
    """What :func:`load_lids` returns: the spec and params, the certified domains (best first) and the record."""

    spec: nets.Spec
    params: Any
    domains: list
    record: dict


def _domain_tree(domain):
    if isinstance(domain, Box):
        return {"lo": domain.lo, "hi": domain.hi}
    return {"center": domain.center, "radius": domain.radius, "generators": domain.generators}


def save_lids(directory: str | Path, spec: nets.Spec, params: Any, lids: list, kind: str, dataset: dict,
              cert_rows: np.ndarray, heldout_rows: np.ndarray, extra: dict | None = None) -> None:
    """Writes the certified ``lids`` (best first) around ``params`` to ``directory``."""
    ordered = sorted(lids, key=lambda l: -l.log_volume)
    record = {
        "format": LID_FORMAT,
        "spec": nets.spec_to_dict(spec),
        "domain": kind,
        "rank": ordered[0].domain.rank if isinstance(ordered[0].domain, Zonotope) else 0,
        "dataset": dataset,
        "cert_rows": np.asarray(cert_rows).tolist(),
        "heldout_rows": np.asarray(heldout_rows).tolist(),
        "lids": [{
            "step": l.step, "scale": l.scale, "log_volume": l.log_volume,
            "mean_log_width": float(domains.mean_log_width(l.domain)),
            "certificates": [c._asdict() for c in l.certificates],
        } for l in ordered],
        **(extra or {}),
    }
    tree = {"params": params, "lids": [_domain_tree(l.domain) for l in ordered]}
    checkpoint.save(directory, 0, jax.tree.map(np.asarray, tree), record, max_to_keep=1)


def load_lids(directory: str | Path) -> StoredLIDs:
    """Reads what :func:`save_lids` wrote; refuses other or damaged directories."""
    _, record = checkpoint.read_record(directory)
    if record.get("format") != LID_FORMAT:
        raise checkpoint.CheckpointError(f"{directory} does not hold certified LIDs")
    spec = nets.spec_from_dict(record["spec"])
    shapes = nets.param_shapes(spec)
    params = {n: {k: jax.ShapeDtypeStruct(s, np.float32) for k, s in layer.items()} for n, layer in shapes.items()}
    rank = record["rank"]
    if record["domain"] == "box":
        one = {"lo": params, "hi": params}
    else:
        gens = {n: {k: jax.ShapeDtypeStruct((rank,) + s, np.float32) for k, s in layer.items()}
                for n, layer in shapes.items()}
        one = {"center": params, "radius": params, "generators": gens}
    abstract = {"params": params, "lids": [one] * len(record["lids"])}
    tree, record = checkpoint.restore(directory, abstract)
    tree = jax.tree.map(np.asarray, tree)
    found = [Box(**t) if record["domain"] == "box" else Zonotope(**t) for t in tree["lids"]]
    return StoredLIDs(spec, tree["params"], found, record)


def certify_again(stored: StoredLIDs, index: int, x_cert, y_cert, x_heldout, y_heldout, confidence: float = 0.95):
    """Recomputes LID ``index``'s certificate for each stored tau on the given samples."""
    from certify import specs

    taus = [c["tau"] for c in stored.record["lids"][index]["certificates"]]
    return [specs.certificate(stored.spec, stored.domains[index], specs.Constraint(x_cert, y_cert, tau),
                              x_heldout, y_heldout, confidence) for tau in taus]
