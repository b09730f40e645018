"""Certified LIDs for an Adult MLP and a digits CNN over three values of tau, box against zonotope."""

from experiments import lid


def get_config() -> lid.Config:
    return lid.Config()
