"""``finetune_noise`` with a chain of 40 certified boxes over the fine-tuning (each checked on the
held-out rows at confidence 1 - 0.05 / 40, the chain stopped at the first that fails)."""

from experiments import finetune


def get_config() -> finetune.Config:
    return finetune.Config(shift="noise", deltas=(0.1, 0.2, 0.3, 0.4), recentre=40, out="results/finetune_noise_chain")
