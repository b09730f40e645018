"""Experiment: pruning Adult MLPs with one editor against magnitude pruning (with and without fine-tuning).

    python experiments/pruning.py [--steps 1500] [--out results/pruning]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.compliance import main  # noqa: E402

if __name__ == "__main__":
    sparsities = [0.5, 0.7, 0.8, 0.9, 0.95]
    main("Pruning Adult MLPs (mlp:32,32) to sparsity 0.9", "results/pruning", "pruning", 0.9,
         {"magnitude": sparsities, "magnitude+finetune": sparsities})
