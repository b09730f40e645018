"""Experiment: data minimisation on Adult with one editor against removal by group norm or permutation importance (with and without fine-tuning) and retraining.

    python experiments/minimisation.py [--steps 1500] [--out results/minimisation]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.compliance import main  # noqa: E402

if __name__ == "__main__":
    groups = [3, 5, 7, 10]
    main("Data minimisation on Adult (14 feature groups, at most 7 read), mlp:32,32", "results/minimisation",
         "minimisation", 7.0, {name: groups for name in ("group_norm", "group_norm+finetune", "permutation",
                                                          "permutation+finetune", "retrain")})
