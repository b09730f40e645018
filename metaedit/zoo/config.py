"""How a zoo is trained: its settings and the per-member hyperparameters drawn from them."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import numpy as np

from metaedit.options import option


class ZooError(ValueError):
    """A zoo configuration, or a zoo directory, does not fit what was asked."""


@dataclasses.dataclass(frozen=True)
class ZooConfig:
    """How to train a zoo. Ranges are ``(low, high)``; learning rate and weight decay log-uniform.

    ``epochs`` sets the longest run: ``ceil(epochs * n_train / batch_size)`` steps; each member
    trains for a ``steps_fraction`` of that. ``subsample``: the fraction of the training set a
    member sees. ``network_split``: fractions of members in the train/val/test split of networks.
    """

    members: int = option(64, "networks in the zoo")
    epochs: float = option(2.0, "passes over the training split of the longest-training member")
    batch_size: int = option(128, "rows per optimiser step")
    chunk_steps: int = option(100, "steps between checkpoints (and progress updates)")
    seed: int = option(0, "seeds the hyperparameters, the initialisation, the batches and the network split")
    learning_rate: tuple[float, float] = option((1e-3, 1e-2), "range of the members' AdamW learning rates "
                                                "(log-uniform)", metavar=("MIN", "MAX"))
    weight_decay: tuple[float, float] = option((1e-5, 1e-3), "range of the members' AdamW weight decays "
                                               "(log-uniform)", metavar=("MIN", "MAX"))
    steps_fraction: tuple[float, float] = option((0.75, 1.0), "range of the fraction of the longest run each "
                                                 "member trains for", metavar=("MIN", "MAX"))
    init_scale: tuple[float, float] = option((0.75, 1.25), "range of the members' initialisation scales",
                                             metavar=("MIN", "MAX"))
    subsample: tuple[float, float] = option((0.5, 1.0), "range of the fraction of the training rows each "
                                            "member sees", metavar=("MIN", "MAX"))
    network_split: tuple[float, float, float] = option(
        (0.7, 0.15, 0.15), "fractions of the networks in the train / val / test split of networks",
        metavar=("TRAIN", "VAL", "TEST"))

    def __post_init__(self):
        for name in ("members", "batch_size", "chunk_steps"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ZooError(f"ZooConfig.{name} must be a positive integer, got {value!r}")
        if self.seed < 0:
            raise ZooError(f"ZooConfig.seed must be >= 0, got {self.seed}")
        if not self.epochs > 0:
            raise ZooError(f"ZooConfig.epochs must be > 0, got {self.epochs}")
        bounds = {
            "learning_rate": (0.0, math.inf, False),
            "weight_decay": (0.0, math.inf, False),
            "steps_fraction": (0.0, 1.0, True),
            "init_scale": (0.0, math.inf, False),
            "subsample": (0.0, 1.0, True),
        }
        for name, (low, high, closed_high) in bounds.items():
            lo, hi = getattr(self, name)
            if not (low < lo <= hi and (hi <= high if closed_high else hi < high)):
                raise ZooError(
                    f"ZooConfig.{name} must be a range (low, high) with {low} < low <= high"
                    f"{' <= ' + str(high) if closed_high else ''}, got {(lo, hi)}"
                )
        split = self.network_split
        if len(split) != 3 or min(split) < 0 or not math.isclose(sum(split), 1.0):
            raise ZooError(f"ZooConfig.network_split must be 3 fractions summing to 1, got {split}")

    def max_steps(self, n_train: int) -> int:
        """Steps of the longest-training member."""
        return max(1, math.ceil(self.epochs * n_train / self.batch_size))

    def num_chunks(self, n_train: int) -> int:
        return math.ceil(self.max_steps(n_train) / self.chunk_steps)


class Hparams(NamedTuple):
    """Per-member hyperparameters; each field is a scalar for one member or [P] for a zoo.

    subsample_size, data_offset: the member sees training rows ``(data_offset + r) % n`` for
    ``r < subsample_size``. batch_seed: seeds the member's batch draws.
    """

    learning_rate: Any
    weight_decay: Any
    num_steps: Any
    init_scale: Any
    subsample_size: Any
    data_offset: Any
    batch_seed: Any

    def member(self, index: int) -> "Hparams":
        """The scalar hyperparameters of member ``index`` of a stacked [P] set."""
        return Hparams(*(np.asarray(v)[index] for v in self))


HPARAM_DTYPES = (np.float32, np.float32, np.int32, np.float32, np.int32, np.int32, np.int32)


def sample_hparams(config: ZooConfig, n_train: int) -> Hparams:
    """Draws [P] hyperparameters from ``config``'s ranges with a numpy generator seeded by ``config.seed``."""
    rng = np.random.default_rng([config.seed, 1])
    p = config.members

    def log_uniform(low, high):
        return np.exp(rng.uniform(np.log(low), np.log(high), p))

    max_steps = config.max_steps(n_train)
    values = (
        log_uniform(*config.learning_rate),
        log_uniform(*config.weight_decay),
        np.maximum(1, np.round(rng.uniform(*config.steps_fraction, p) * max_steps)),
        rng.uniform(*config.init_scale, p),
        np.maximum(1, np.round(rng.uniform(*config.subsample, p) * n_train)),
        rng.integers(0, n_train, p),
        rng.integers(0, 2**31 - 1, p),
    )
    return Hparams(*(np.asarray(v).astype(d) for v, d in zip(values, HPARAM_DTYPES)))
