"""Split MNIST-5k, domain-incremental, MLP 784-100-2: every baseline and every safe variant, 5 seeds."""

from experiments import continual


def get_config() -> continual.Config:
    return continual.Config()
