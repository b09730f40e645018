"""Experiment: equalised odds on Adult (sex) with one editor against ThresholdOptimizer and penalty fine-tuning.

    python experiments/fairness.py [--steps 1500] [--out results/fairness]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.compliance import main  # noqa: E402

if __name__ == "__main__":
    main("Equalised odds on Adult (sex), mlp:32,32, epsilon 0.05", "results/fairness", "fairness", 0.05,
         {"threshold_optimizer": [0.0], "penalty_finetune": [1.0, 5.0, 20.0], "penalty_retrain": [5.0]},
         lambdas=(0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0))
