"""Equalised odds on Adult (sex), epsilon 0.05, a 512-member zoo: one editor (its lambda grid and its calibrated
mode) against ThresholdOptimizer, penalty fine-tuning, penalty retraining and ExponentiatedGradient."""

from experiments import compliance
from metaedit.editor import EditorTrainConfig
from metaedit.zoo import ZooConfig

STRENGTHS = (("threshold_optimizer", (0.0,)), ("penalty_finetune", (1.0, 5.0, 20.0)), ("penalty_retrain", (5.0,)),
             ("exponentiated_gradient", (0.05,)))
LAMBDAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)


def get_config() -> compliance.Config:
    return compliance.Config(
        title="Equalised odds on Adult (sex), mlp:32,32, epsilon 0.05", zoo=ZooConfig(members=512, epochs=2, seed=0),
        editor=EditorTrainConfig(requirement="fairness"),
        strengths=STRENGTHS, lambdas=LAMBDAS, out="results/fairness")
