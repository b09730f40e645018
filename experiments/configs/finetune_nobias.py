"""The fine-tuning experiment without LID bias weights."""

from experiments import finetune


def get_config() -> finetune.Config:
    return finetune.Config(bias="none", out="results/finetune_nobias")
