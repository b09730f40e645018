"""certify: locally invariant parameter domains in which a network provably meets a specification.

    import certify
    # certified accuracy >= 0.8 on new data, at 95% confidence
    lids = certify.for_network(spec, params, dataset, tau=0.8, config=certify.LIDConfig(domain="box"))
    certify.save_lids("runs/lid", spec, params, lids.lids, dataset.source, lids.cert_rows, lids.heldout_rows)

The names below are the entry points a user needs; each lives in one module (the module paths
stay importable): domains (:mod:`certify.domains`), bounds (:mod:`certify.bounds`), certificates
(:mod:`certify.certificates`), the LID solver (:mod:`certify.solver`, :mod:`certify.lid`),
projection (:mod:`certify.project`), storage (:mod:`certify.store`) and safe updates
(:mod:`certify.continual.safe`). Attributes are imported on first use.
"""

from __future__ import annotations

from metaedit.exports import lazy

__version__ = "0.1.0"

_EXPORTS = {
    "certify.domains": ("Domain", "DomainError", "Box", "Zonotope", "DOMAINS", "box_around", "zonotope_around"),
    "certify.bounds": ("output_bounds", "Bounds", "BOUNDS"),
    "certify.relaxation": ("margin_lower", "optimised_margin"),
    "certify.guarantee": ("GUARANTEES", "fixed_sequence", "fixed_sequence_test", "unexercised_mask"),
    "certify.audit": ("sampled_violations", "attacked_margins"),
    "certify.certificates": ("Constraint", "Certificate", "CertificateError", "certificate", "certified",
                             "certified_accuracy", "point_certified_accuracy", "clopper_pearson_lower"),
    "certify.solver": ("LIDConfig", "LIDError", "LIDProblem", "LIDState", "make_problem", "solve"),
    "certify.lid": ("LID", "LIDResult", "NetworkLIDs", "compute", "for_network", "best"),
    "certify.project": ("projected", "nearest", "distance"),
    "certify.store": ("save_lids", "load_lids", "StoredLIDs"),
    "certify.continual.safe": ("SafeConfig", "SafeResult", "train_safely", "projected_steps"),
}
__all__, __getattr__, __dir__ = lazy("certify", globals(), _EXPORTS)
