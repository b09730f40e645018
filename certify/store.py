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

from certify import certificates, domains
from certify.domains import Domain
from metaedit import checkpoint, nets

LID_FORMAT = "certify-lid/1"


class StoredLIDs(NamedTuple):
    """What :func:`load_lids` returns: the spec and params, the certified domains (best first) and the record."""

    spec: nets.Spec
    params: Any
    domains: list[Domain]
    record: dict


def save_lids(directory: str | Path, spec: nets.Spec, params: Any, lids: list, dataset: dict,
              cert_rows: np.ndarray, heldout_rows: np.ndarray, margin_tol: float | None = None,
              extra: dict | None = None, bound: str = "interval") -> None:
    """Writes the certified ``lids`` (best first) around ``params`` to ``directory``; ``margin_tol`` and
    ``bound`` are the tolerance (None: the dtype's default) and the bound kind they were certified
    with, kept for checking them again; the guarantee and confidence come from their certificates."""
    ordered = sorted(lids, key=lambda l: -l.log_volume)
    record = {
        "format": LID_FORMAT,
        "spec": nets.spec_to_dict(spec),
        "domain": ordered[0].domain.kind,
        "rank": ordered[0].domain.rank,
        "dataset": dataset,
        "cert_rows": np.asarray(cert_rows).tolist(),
        "heldout_rows": np.asarray(heldout_rows).tolist(),
        "margin_tol": margin_tol,
        "bound": bound,
        "guarantee": ordered[0].certificates[0].guarantee,
        "confidence": ordered[0].certificates[0].confidence,
        "lids": [{
            "step": l.step, "scale": l.scale, "log_volume": l.log_volume,
            "mean_log_width": float(l.domain.mean_log_width()),
            "certificates": [c._asdict() for c in l.certificates],
        } for l in ordered],
        **(extra or {}),
    }
    tree = {"params": params, "lids": [l.domain.to_tree() for l in ordered]}
    checkpoint.save(directory, 0, jax.tree.map(np.asarray, tree), record, max_to_keep=1)


def load_lids(directory: str | Path) -> StoredLIDs:
    """Reads what :func:`save_lids` wrote; refuses other or damaged directories."""
    _, record = checkpoint.read_record(directory)
    if record.get("format") != LID_FORMAT:
        raise checkpoint.CheckpointError(f"{directory} does not hold certified LIDs")
    spec = nets.spec_from_dict(record["spec"])
    kind = domains.get(record["domain"])
    params = {n: {k: jax.ShapeDtypeStruct(s, np.float32) for k, s in layer.items()}
              for n, layer in nets.param_shapes(spec).items()}
    abstract = {"params": params, "lids": [kind.abstract_tree(params, record["rank"])] * len(record["lids"])}
    tree, record = checkpoint.restore(directory, abstract)
    tree = jax.tree.map(np.asarray, tree)
    return StoredLIDs(spec, tree["params"], [kind.from_tree(t) for t in tree["lids"]], record)


def certify_again(stored: StoredLIDs, index: int, x_cert, y_cert, x_heldout,
                  y_heldout) -> list[certificates.Certificate]:
    """Recomputes LID ``index``'s certificate for each stored tau on the given samples, with the
    margin tolerance, bound kind, guarantee and confidence it was certified with."""
    record = stored.record
    taus = [c["tau"] for c in record["lids"][index]["certificates"]]
    kind, confidence = record.get("guarantee", "samples"), record.get("confidence", 0.95)
    found = [certificates.certificate(stored.spec, stored.domains[index], certificates.Constraint(x_cert, y_cert, tau),
                                      x_heldout, y_heldout, confidence, record.get("margin_tol"),
                                      record.get("bound", "interval")) for tau in taus]
    if kind == "distribution":
        found = [c._replace(holds=c.lower_bound >= c.tau, guarantee=kind) for c in found]
    return found


def check(directory: str | Path, params: Any | None = None, spec: nets.Spec | None = None, dataset=None) -> dict:
    """What ``metaedit check`` reports for the LID saved in ``directory``, as a JSON-ready dict.

    The best LID's certificate is recomputed on the stored certification and held-out rows of the
    data set it was certified on (``heldout_per_class``: the held-out certified accuracy of each
    class); ``inside`` says whether ``params`` (default: the LID's own network, of architecture
    ``spec``) lie in it. Raises :class:`metaedit.nets.SpecError` when ``spec`` (or the shapes of
    ``params``) is not the LID's architecture. ``dataset`` (optional) is the data set the LID was
    certified on, already loaded (by default it is loaded from the record).
    """
    from metaedit.datasets import load_source

    stored = load_lids(directory)
    if params is None:
        params = stored.params
    elif spec is not None and spec != stored.spec:
        raise nets.SpecError(f"the params are a {nets.describe(spec)} network; the LID is for "
                             f"{nets.describe(stored.spec)}")
    else:
        nets.check_shapes(stored.spec, params)
    best = stored.domains[0]
    dataset = load_source(stored.record["dataset"]) if dataset is None else dataset
    cert_rows, heldout_rows = np.asarray(stored.record["cert_rows"]), np.asarray(stored.record["heldout_rows"])
    found = certify_again(stored, 0, dataset.x_test[cert_rows], dataset.y_test[cert_rows],
                          dataset.x_test[heldout_rows], dataset.y_test[heldout_rows])
    first = found[0]
    per_class = certificates.per_class_certified_accuracy(stored.spec, best, dataset.x_test[heldout_rows],
                                                          dataset.y_test[heldout_rows], stored.spec.num_classes,
                                                          stored.record.get("margin_tol"),
                                                          stored.record.get("bound", "interval"))
    return {
        "lid": str(directory),
        "domain": stored.record["domain"],
        "architecture": nets.describe(stored.spec),
        "inside": best.contains(params, rtol=1e-6),
        "tau": first.tau,
        "certified_accuracy": first.certified_accuracy,
        "certified_accuracy_lower_bound": first.lower_bound,
        "heldout_certified_accuracy": first.heldout_certified_accuracy,
        "heldout_per_class": [None if np.isnan(v) else float(v) for v in per_class],
        "confidence": first.confidence,
        "guarantee": stored.record.get("guarantee", "samples"),
        "bound": ("zonotope" if stored.record.get("bound", "interval") == "interval" and stored.record["rank"]
                  else stored.record.get("bound", "interval")),
        "frozen_parameters": stored.record.get("frozen_parameters", 0),
        "cert_samples": len(cert_rows),
        "heldout_samples": len(heldout_rows),
        "log_volume": float(best.log_volume()),
        "mean_log_width": float(best.mean_log_width()),
        "lids": len(stored.domains),
        "holds": all(c.holds for c in found),
        "solve_seconds": stored.record.get("solve_seconds"),
    }
