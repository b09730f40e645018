"""The safe-updates paper's Split MNIST set-up: its CNN (6,179 parameters) on Split MNIST-5k, tau =
task accuracy - 0.12 floored at accuracy / 2, 400 certification samples, 5 seeds; every baseline
(LwF included) and the safe variants. ``--scenario task|domain|class`` (default domain)."""

from experiments import continual


def get_config() -> continual.Config:
    return continual.Config(net="paper-cnn", delta=0.12, tau_max=1.0, cert_samples=400,
                            only=("naive", "l2", "ewc", "si", "lwf", "a-gem", "replay-10", "replay-50",
                                  "lid", "lid-update", "lid-update-best-loss"))
