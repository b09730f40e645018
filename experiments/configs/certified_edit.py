"""Certified edits on Adult: pruning, minimisation and fairness, against the plain edit and fine-tuning inside the LID."""

from experiments import certified_edit


def get_config() -> certified_edit.Config:
    return certified_edit.Config()
