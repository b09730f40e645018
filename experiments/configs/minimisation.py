"""Data minimisation on Adult (14 feature groups, at most 7 read): one editor against removal by group norm or
permutation importance (with and without fine-tuning) and retraining."""

from experiments import compliance
from metaedit.editor import EditorTrainConfig

KEPT = (3, 5, 7, 10)


def get_config() -> compliance.Config:
    return compliance.Config(
        title="Data minimisation on Adult (14 feature groups, at most 7 read), mlp:32,32",
        editor=EditorTrainConfig(requirement="minimisation"), target=7.0,
        strengths=tuple((name, KEPT) for name in ("group_norm", "group_norm+finetune", "permutation",
                                                   "permutation+finetune", "retrain")),
        out="results/minimisation")
