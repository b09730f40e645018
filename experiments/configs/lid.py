"""Certified LIDs for an Adult MLP and a digits CNN over three values of tau: interval, zonotope and linear bounds."""

from experiments import lid


def get_config() -> lid.Config:
    return lid.Config()
