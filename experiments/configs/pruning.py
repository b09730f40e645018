"""Pruning Adult MLPs (mlp:32,32) to sparsity 0.9: one editor against magnitude pruning with and without fine-tuning."""

from experiments import compliance
from metaedit.editor import EditorTrainConfig

SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)


def get_config() -> compliance.Config:
    return compliance.Config(
        title="Pruning Adult MLPs (mlp:32,32) to sparsity 0.9", editor=EditorTrainConfig(requirement="pruning"),
        strengths=(("magnitude", SPARSITIES), ("magnitude+finetune", SPARSITIES)), out="results/pruning")
