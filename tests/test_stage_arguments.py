"""`stage: ue_dpo` through LLaMA-Factory's own argument parser, and the errors users see."""

import pytest

import ue_dpo

BASE = {
    "model_name_or_path": "unused-model",
    "stage": "ue_dpo",
    "do_train": True,
    "finetuning_type": "lora",
    "dataset": "unused",
    "template": "llava",
    "output_dir": "unused-out",
    "report_to": "none",
}


def parse(**overrides):
    ue_dpo.apply_llamafactory_integration()
    from llamafactory.hparams import get_train_args

    return get_train_args({**BASE, **overrides})


def test_ue_dpo_becomes_a_dpo_run_with_the_flag_and_defaults():
    _, _, _, finetuning_args, _ = parse()
    assert finetuning_args.stage == "dpo"
    assert finetuning_args.ue_dpo_stage is True
    assert finetuning_args.use_ref_model is True
    assert (finetuning_args.ue_alpha, finetuning_args.ue_tau, finetuning_args.ue_noise_step) == (0.3, 0.4, 500)
    assert finetuning_args.pref_beta == 0.1
    assert finetuning_args.to_dict()["ue_noise_space"] == "pixel_values"


def test_plain_dpo_is_untouched():
    _, _, _, finetuning_args, _ = parse(stage="dpo")
    assert finetuning_args.ue_dpo_stage is False


def test_command_line_accepts_the_new_stage():
    ue_dpo.apply_llamafactory_integration()
    from llamafactory.hparams import get_train_args

    argv = [f"--{key}={value}" for key, value in {**BASE, "ue_alpha": 0.2}.items()]
    _, _, _, finetuning_args, _ = get_train_args(argv)
    assert finetuning_args.ue_dpo_stage and finetuning_args.ue_alpha == 0.2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"ue_alpha": 1.0}, r"`ue_alpha: 1.0` is out of range; UE-DPO needs 0 <= ue_alpha < 1"),
        ({"ue_alpha": -0.1}, r"`ue_alpha: -0.1` is out of range"),
        ({"ue_tau": 0.0}, r"`ue_tau: 0.0` is out of range; use 0 < ue_tau <= 0.5"),
        ({"ue_tau": 0.6}, r"`ue_tau: 0.6` is out of range"),
        ({"ue_noise_step": 1000}, r"`ue_noise_step: 1000` is out of range; use an integer in \[0, 999\]"),
        ({"ue_noise_space": "latent"}, r"`ue_noise_space: latent` is not supported; use one of: pixel_values, image"),
        ({"ue_stat_scope": "global"}, r"`ue_stat_scope: global` is not supported"),
        ({"pref_loss": "hinge"}, r"`pref_loss: hinge` is not supported with `stage: ue_dpo`"),
        ({"pref_loss": "ipo"}, r"`pref_loss: ipo` is not supported with `stage: ue_dpo`"),
        ({"ld_alpha": 0.5}, r"`ld_alpha` \(LD-DPO\) is not supported"),
    ],
)
def test_bad_values_get_a_clear_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        parse(**overrides)


def test_unknown_key_is_still_rejected():
    with pytest.raises(ValueError, match="ue_alfa"):
        parse(ue_alfa=0.3)
