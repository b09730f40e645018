"""Pruning a zoo of digits CNNs (cnn:8,8) to sparsity 0.9: one editor against magnitude pruning."""

from experiments import compliance
from metaedit.editor import EditorTrainConfig
from metaedit.zoo import ZooConfig

SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)


def get_config() -> compliance.Config:
    return compliance.Config(
        title="Pruning digits CNNs (cnn:8,8) to sparsity 0.9", dataset="digits", arch="cnn:8,8",
        zoo=ZooConfig(members=128, epochs=20, batch_size=32, seed=0), editor=EditorTrainConfig(requirement="pruning"),
        strengths=(("magnitude", SPARSITIES), ("magnitude+finetune", SPARSITIES)), out="results/pruning_cnn")
