"""Equalised odds on German credit (sex), epsilon 0.05, against the fairness baselines.

German credit has 700 training and 300 test rows, so each held-out network's gap is measured on a
few dozen rows per (label, sex) cell: expect noisy compliance rates.
"""

from experiments import compliance
from experiments.configs.fairness import LAMBDAS, STRENGTHS
from metaedit.editor import EditorTrainConfig
from metaedit.zoo import ZooConfig


def get_config() -> compliance.Config:
    return compliance.Config(
        title="Equalised odds on German credit (sex), mlp:16, epsilon 0.05", dataset="german", arch="mlp:16",
        zoo=ZooConfig(members=256, epochs=20, batch_size=32, seed=0), editor=EditorTrainConfig(requirement="fairness"),
        strengths=STRENGTHS, lambdas=LAMBDAS, out="results/fairness_german")
