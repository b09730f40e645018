"""Pruning digits CNNs (cnn:16,32) to sparsity 0.9: one budgeted editor (it removes lambda * target of each
network's weights; with and without the layer-wise refit) against magnitude pruning alone, with
fine-tuning and with the refit."""

from experiments import compliance
from metaedit.editor import EditorTrainConfig
from metaedit.zoo import ZooConfig

SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)


def get_config() -> compliance.Config:
    return compliance.Config(
        title="Pruning digits CNNs (cnn:16,32) to sparsity 0.9", dataset="digits", arch="cnn:16,32",
        zoo=ZooConfig(members=256, epochs=20, batch_size=32, seed=0),
        editor=EditorTrainConfig(requirement="pruning", keep="best", magnitude=True, budget=True),
        strengths=(("magnitude", SPARSITIES), ("magnitude+finetune", SPARSITIES), ("magnitude+refit", SPARSITIES)),
        out="results/pruning_cnn")
