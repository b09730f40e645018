"""Experiment: equalised odds on German credit (sex) with one editor against the fairness baselines.

    python experiments/fairness_german.py [--steps 1500] [--out results/fairness_german]

German credit has 700 training and 300 test rows, so each held-out network's gap is measured on a
few dozen rows per (label, sex) cell: expect noisy compliance rates.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.compliance import main  # noqa: E402
from metaedit.zoo import ZooConfig  # noqa: E402

if __name__ == "__main__":
    main("Equalised odds on German credit (sex), mlp:16, epsilon 0.05", "results/fairness_german", "fairness", 0.05,
         {"threshold_optimizer": [0.0], "penalty_finetune": [1.0, 5.0, 20.0], "penalty_retrain": [5.0]},
         zoo_setup=("german", "mlp:16", ZooConfig(members=256, epochs=20, batch_size=32, seed=0)),
         lambdas=(0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0))
