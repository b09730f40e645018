"""The safe-updates paper's Split MNIST set-up: its CNN (6,179 parameters) on Split MNIST-5k, tau =
task accuracy - 0.12 floored at accuracy / 2, 400 certification samples, 5 seeds; every baseline
(LwF included), the paper's safe variants (one LID per task) and the re-centred one (30 LIDs per
task, update bias). ``--scenario task|domain|class`` (default domain); the re-centred variant is
slow on a CPU (7 minutes per seed on a GPU), so run seeds in parallel with ``--seeds 1
--first-seed K`` and join them with ``--merge``."""

from experiments import continual


def get_config() -> continual.Config:
    return continual.Config(net="paper-cnn", delta=0.12, tau_max=1.0, cert_samples=400, recentre=30,
                            only=("naive", "l2", "ewc", "si", "lwf", "a-gem", "replay-10", "replay-50",
                                  "lid", "lid-update", "lid-update-recentred"))
