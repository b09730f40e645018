"""A frozen digits CNN's head certified on digits and fine-tuned on mirrored digits; LID biased along task B's gradient."""

from experiments import finetune


def get_config() -> finetune.Config:
    return finetune.Config(out="results/finetune")
