"""Domains in parameter space: one interface (:class:`Domain`), boxes and zonotopes, a registry.

* :class:`Box`: ``lo <= theta <= hi`` per parameter;
* :class:`Zonotope`: ``center + radius * e + sum_k z_k generators[k]`` (a box part and r shared,
  low-rank generators).

A new kind is one module implementing :class:`Domain` and a line in :data:`DOMAINS`.
"""

from certify.domains.base import Domain, DomainError
from certify.domains.box import Box, box_around
from certify.domains.zonotope import Zonotope, ZonotopeProjection, project_zonotope, zonotope_around

DOMAINS: dict[str, type[Domain]] = {"box": Box, "zonotope": Zonotope}


def get(kind: str) -> type[Domain]:
    """The domain class registered as ``kind``."""
    if kind not in DOMAINS:
        raise DomainError(f"unknown domain kind {kind!r}; known: {', '.join(DOMAINS)}")
    return DOMAINS[kind]


__all__ = ["Domain", "DomainError", "Box", "Zonotope", "ZonotopeProjection", "DOMAINS", "get", "box_around",
           "zonotope_around", "project_zonotope"]
