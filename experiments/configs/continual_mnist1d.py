"""Split MNIST-1D, domain-incremental, MLP 40-100-2: a subset of the methods, 5 seeds."""

from experiments import continual


def get_config() -> continual.Config:
    return continual.Config(dataset="mnist1d",
                            only=("naive", "l2", "ewc", "si", "a-gem", "replay-50", "lid", "lid-update", "lid-recentred",
                                  "lid-update-recentred"))
