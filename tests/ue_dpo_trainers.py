"""`stage: ue_dpo`'s trainer built in the test process from a training config, as LLaMA-Factory's workflow builds it."""

import torch

import ue_dpo


def built_trainer(config: dict, *, trained_adapter: bool = True):
    """The trainer in train mode; with `trained_adapter`, its LoRA B matrices drawn at random (seed 0), so that the
    policy is not the reference (a fresh adapter is zero)."""
    ue_dpo.apply_llamafactory_integration()
    from llamafactory.hparams import get_train_args

    from ue_dpo.llamafactory.workflow import build_ue_dpo_trainer

    trainer = build_ue_dpo_trainer(*get_train_args(config)[:4])[0]
    trainer.model.train()
    if trained_adapter:
        generator = torch.Generator().manual_seed(0)
        for name, parameter in trainer.model.named_parameters():
            if "lora_B" in name:
                parameter.data.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return trainer
