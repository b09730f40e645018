"""A frozen digits CNN's head certified on digits (distribution guarantee) and fine-tuned on noisy digits, over tau."""

from experiments import finetune


def get_config() -> finetune.Config:
    return finetune.Config(shift="noise", deltas=(0.1, 0.2, 0.3, 0.4), out="results/finetune_noise")
