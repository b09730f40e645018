"""Experiment: pruning a zoo of digits CNNs with one editor against magnitude pruning.

    python experiments/pruning_cnn.py [--steps 1500] [--out results/pruning_cnn]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.compliance import main  # noqa: E402
from metaedit.zoo import ZooConfig  # noqa: E402

if __name__ == "__main__":
    sparsities = [0.5, 0.7, 0.8, 0.9, 0.95]
    main("Pruning digits CNNs (cnn:8,8) to sparsity 0.9", "results/pruning_cnn", "pruning", 0.9,
         {"magnitude": sparsities, "magnitude+finetune": sparsities},
         zoo_setup=("digits", "cnn:8,8", ZooConfig(members=128, epochs=20, batch_size=32, seed=0)))
