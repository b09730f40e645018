"""Equalised odds on Adult (sex), epsilon 0.05: one editor against ThresholdOptimizer, penalty fine-tuning and retraining."""

from experiments import compliance
from metaedit.editor import EditorTrainConfig

STRENGTHS = (("threshold_optimizer", (0.0,)), ("penalty_finetune", (1.0, 5.0, 20.0)), ("penalty_retrain", (5.0,)))
LAMBDAS = (0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def get_config() -> compliance.Config:
    return compliance.Config(
        title="Equalised odds on Adult (sex), mlp:32,32, epsilon 0.05", editor=EditorTrainConfig(requirement="fairness"),
        strengths=STRENGTHS, lambdas=LAMBDAS, out="results/fairness")
