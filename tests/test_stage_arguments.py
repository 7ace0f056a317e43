"""`stage: ue_dpo` through LLaMA-Factory's own argument parser, and the errors users see."""

import pytest

import ue_dpo
from ue_dpo.argument_checks import UEDPOUserError

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
        ({"ue_noise_step": 500.5}, r"`ue_noise_step: 500.5` must be an integer in \[0, 999\], not a float"),
        ({"ue_noise_step": 500.0}, r"`ue_noise_step: 500.0` must be an integer in \[0, 999\], not a float"),
        ({"ue_token_chunk_size": 8.0}, r"`ue_token_chunk_size: 8.0` must be a positive integer, not a float"),
        ({"ue_prefix_sharing": "yes"}, r"`ue_prefix_sharing: 'yes'` must be true or false"),
        ({"ue_alpha": "0.3"}, r"`ue_alpha: '0.3'` must be a number"),
        (
            {"pref_bco_weight": 0.5},
            (
                r"`pref_bco_weight: 0.5` is not supported with `stage: ue_dpo`: "
                r"LLaMA-Factory's `stage: dpo` mixes a BCO loss in"
            ),
        ),
        ({"simpo_gamma": 1.0}, r"`simpo_gamma: 1.0` is not supported with `stage: ue_dpo`"),
        ({"kto_chosen_weight": 2.0}, r"`kto_chosen_weight: 2.0` is not supported with `stage: ue_dpo`"),
        (
            {"ue_ref_cache_dir": "cache"},
            (
                r"`ue_ref_cache_dir` is the folder of the `ue_precompute_ref` cache, which "
                r"is off; remove `ue_ref_cache_dir` or set `ue_precompute_ref: true`"
            ),
        ),
        (
            {"lora_target": "q_proj,lm_head"},
            (
                r"`lora_target: q_proj,lm_head` would make peft wrap `lm_head` in its "
                r"peft.tuners.lora.layer.Linear.*Remove `lm_head` from `lora_target`"
            ),
        ),
        (
            {"additional_target": "lm_head"},
            (
                r"`additional_target: lm_head` would make peft wrap `lm_head` in its "
                r"peft.utils.other.ModulesToSaveWrapper"
            ),
        ),
        (
            {"finetuning_type": "oft", "lora_target": "lm_head"},
            (
                r"`lora_target: lm_head` would make peft wrap "
                r"`lm_head` in its peft.tuners.oft.layer.Linear"
            ),
        ),
    ],
)
def test_bad_values_get_a_clear_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        parse(**overrides)


def test_the_router_loss_coefficient_is_refused_at_start_as_stage_dpo_adds_no_router_loss():
    from ue_dpo.llamafactory.workflow import build_ue_dpo_trainer

    arguments = parse(moe_aux_loss_coef=0.001)[:4]
    with pytest.raises(UEDPOUserError, match=r"`moe_aux_loss_coef: 0.001` is not supported with `stage: ue_dpo`: "):
        build_ue_dpo_trainer(*arguments)  # before it reads the data set or the model, which do not exist here


def test_crop_to_patches_is_refused_at_start_for_a_family_whose_plugin_does_not_read_it(
    tiny_llava_dir, shapes_dataset_dir
):
    from ue_dpo.llamafactory.workflow import build_ue_dpo_trainer

    data = {"dataset_dir": str(shapes_dataset_dir), "dataset": "shapes_pref", "template": "llava"}
    arguments = parse(model_name_or_path=str(tiny_llava_dir), crop_to_patches=True, **data)[:4]
    with pytest.raises(UEDPOUserError, match=r"`crop_to_patches: true` has no effect on LLaVA: .* InternVL 3, 3.5"):
        build_ue_dpo_trainer(*arguments)  # before it reads the data set or loads the model


def test_unknown_key_is_still_rejected():
    with pytest.raises(ValueError, match="ue_alfa"):
        parse(ue_alfa=0.3)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"ue_weighting": "tpo", "ue_tau": 0.3},
            (
                "`ue_tau: 0.3` applies to `ue_weighting: ue` or `mdpo_ue` only, but `ue_weighting: tpo` ignores it; "
                "remove `ue_tau`"
            ),
        ),
        ({"ue_weighting": "ddpo", "ue_alpha": 0.3}, "`ue_alpha: 0.3` applies to `ue_weighting: ue` or `mdpo_ue` only"),
        # an explicit value equal to the default is refused too: the weighting would ignore it all the same
        (
            {"ue_weighting": "tpo", "ue_stat_scope": "sequence"},
            "`ue_stat_scope: sequence` applies to `ue_weighting: ue`",
        ),
        ({"ue_weighting": "uniform", "ue_branches": "both"}, "`ue_branches: both` applies to `ue_weighting: ue`"),
        ({"ue_weighting": "ue", "ddpo_gamma": 3.0}, "`ddpo_gamma` applies to `ue_weighting: ddpo` only"),
        # v' is built for ue and tpo only
        (
            {"ue_weighting": "ddpo", "ue_noise_step": 500},
            (
                "`ue_noise_step: 500` sets the noised image v', which "
                "`ue_weighting: ddpo` does not use; remove `ue_noise_step`"
            ),
        ),
        ({"ue_weighting": "uniform", "ue_noise_space": "image"}, "`ue_noise_space: image` sets the noised image v'"),
        ({"ue_weighting": "uniform", "ue_noise_schedule": "sigmoid"}, "`ue_noise_schedule: sigmoid` sets the noised"),
        ({"ue_weighting": "ddpo", "ue_seed": 7}, "`ue_seed: 7` sets the noised image v', which `ue_weighting: ddpo`"),
    ],
)
def test_keys_the_weighting_ignores_are_refused_even_at_their_default_value(overrides, message):
    with pytest.raises(ValueError) as error:
        parse(**overrides)
    assert message in str(error.value)


def test_keys_left_out_resolve_to_their_defaults_for_every_weighting():
    for weighting in ("ue", "tpo", "ddpo", "uniform"):
        finetuning_args = parse(ue_weighting=weighting)[3]
        assert (
            finetuning_args.ue_alpha,
            finetuning_args.ue_tau,
            finetuning_args.ue_stat_scope,
            finetuning_args.ue_weight_target,
            finetuning_args.ue_branches,
            finetuning_args.ddpo_gamma,
        ) == (0.3, 0.4, "sequence", "policy", "both", 3.0)
        assert (
            finetuning_args.ue_noise_step,
            finetuning_args.ue_noise_schedule,
            finetuning_args.ue_noise_space,
            finetuning_args.ue_seed,
        ) == (500, "sigmoid", "pixel_values", None)
    assert parse(ue_weighting="ddpo", ddpo_gamma=5.0)[3].ddpo_gamma == 5.0
    tpo = parse(ue_weighting="tpo", ue_noise_space="image", ue_noise_step=300, ue_seed=7)[3]
    assert (tpo.ue_noise_space, tpo.ue_noise_step, tpo.ue_seed) == ("image", 300, 7)


@pytest.mark.parametrize("stage", ["dpo", "sft"])
def test_ue_keys_with_another_stage_are_refused(stage):
    with pytest.raises(
        ValueError,
        match=(
            f"`ue_alpha`, `ue_noise_step` apply only to `stage: ue_dpo`, which "
            f"`stage: {stage}` ignores; remove them or set `stage: ue_dpo`"
        ),
    ):
        parse(stage=stage, ue_alpha=0.2, ue_noise_step=500)
    assert parse(stage=stage)[3].ue_alpha == 0.3  # left out, they resolve as for ue_dpo


def test_command_line_tells_an_explicit_key_from_its_default():
    ue_dpo.apply_llamafactory_integration()
    from llamafactory.hparams import get_train_args

    def argv(**overrides):
        return [f"--{key}={value}" for key, value in {**BASE, **overrides}.items()]

    assert get_train_args(argv(ue_stat_scope="batch"))[3].ue_stat_scope == "batch"
    assert get_train_args(argv(ue_weighting="tpo"))[3].ue_tau == 0.4
    with pytest.raises(ValueError, match="`ue_tau: 0.3` applies to `ue_weighting: ue` or `mdpo_ue` only"):
        get_train_args(argv(ue_weighting="tpo", ue_tau=0.3))


def test_lora_target_all_and_lm_head_free_lists_are_accepted():
    assert parse(lora_target="all")[3].lora_target == ["all"]
    assert parse(lora_target="q_proj,v_proj")[3].lora_target == ["q_proj", "v_proj"]
    assert parse(finetuning_type="full", additional_target="lm_head")[3].finetuning_type == "full"  # no peft
