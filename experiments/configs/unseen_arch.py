"""Pruning Adult MLPs of an unseen architecture (mlp:48,48) to sparsity 0.9: an editor trained on a mixed zoo of
seven other MLP architectures (widths 16 to 64, depths 1 to 3) against one trained on mlp:48,48 alone."""

from experiments import architectures


def get_config() -> architectures.Config:
    return architectures.Config(title="Pruning an unseen architecture (mlp:48,48) to sparsity 0.9")
