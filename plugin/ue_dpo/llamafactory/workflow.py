"""`stage: ue_dpo`: LLaMA-Factory's DPO wiring with the UE-DPO collator and trainer."""

from llamafactory.data import get_template_and_fix_tokenizer
from llamafactory.data.parser import get_dataset_list
from llamafactory.extras.constants import IGNORE_INDEX
from llamafactory.extras.ploting import plot_loss
from llamafactory.model import load_config, load_model, load_tokenizer
from llamafactory.train.trainer_utils import create_modelcard_and_push, create_ref_model

from ue_dpo.argument_checks import UEDPOUserError
from ue_dpo.config import check_router_loss_coefficient
from ue_dpo.llamafactory.collator import (
    UEDPODataCollator,
    check_crop_to_patches,
    check_second_images,
    template_family,
)
from ue_dpo.llamafactory.preference_data import load_preference_datasets
from ue_dpo.llamafactory.reference_cache import reference_identity
from ue_dpo.llamafactory.trainer import UEDPOTrainer


def check_preference_datasets(data_args) -> None:
    for names in (data_args.dataset, data_args.eval_dataset):
        if not names:
            continue
        for name, attr in zip(names, get_dataset_list(names, data_args.dataset_dir)):
            if not attr.ranking:
                raise UEDPOUserError(
                    f"dataset `{name}` is not a preference dataset: `stage: ue_dpo` needs chosen/"
                    f'rejected pairs. Add `"ranking": true` (and the chosen/rejected columns) to its entry in '
                    f"{data_args.dataset_dir}/dataset_info.json."
                )


def build_ue_dpo_trainer(model_args, data_args, training_args, finetuning_args, callbacks=None):
    """The trainer (tokenizer, template, data, model, collator) as `stage: ue_dpo` trains, and whether the
    reference is the policy itself (evaluation without a separate reference)."""
    check_router_loss_coefficient(model_args.moe_aux_loss_coef)
    check_preference_datasets(data_args)
    tokenizer_module = load_tokenizer(model_args)
    tokenizer = tokenizer_module["tokenizer"]
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    method = finetuning_args.method
    # refuses a model or template the stage does not train, and second images its layout lacks
    family = template_family(template, load_config(model_args).model_type)
    check_second_images(family, method.second_images, method.name, method.reads_response_images)
    check_crop_to_patches(family, model_args.crop_to_patches)
    dataset_module = load_preference_datasets(
        template, model_args, data_args, training_args, finetuning_args, tokenizer_module
    )
    model = load_model(tokenizer, model_args, finetuning_args, training_args.do_train)

    collator = UEDPODataCollator(
        template=template,
        model=model,
        pad_to_multiple_of=8,
        label_pad_token_id=IGNORE_INDEX if data_args.ignore_pad_token_for_loss else tokenizer.pad_token_id,
        noise_step=finetuning_args.ue_noise_step,
        noise_schedule=finetuning_args.ue_noise_schedule,
        noise_space=finetuning_args.ue_noise_space,
        noise_seed=training_args.seed if finetuning_args.ue_seed is None else finetuning_args.ue_seed,
        with_noised_image=finetuning_args.method.reads_noised_image,
        with_row_digests=finetuning_args.ue_precompute_ref,
        second_images=method.second_images,
        response_images=method.reads_response_images,
        **tokenizer_module,
    )
    if finetuning_args.ref_model is None and not training_args.do_train:
        ref_model = model
    else:
        ref_model = create_ref_model(model_args, finetuning_args)

    trainer = UEDPOTrainer(
        model=model,
        ref_model=ref_model,
        args=training_args,
        finetuning_args=finetuning_args,
        data_collator=collator,
        callbacks=callbacks,
        reference_identity=reference_identity(model_args, data_args, finetuning_args),
        **dataset_module,
        **tokenizer_module,
    )
    return trainer, ref_model is model


def run_ue_dpo(model_args, data_args, training_args, finetuning_args, callbacks=None) -> None:
    trainer, reference_is_policy = build_ue_dpo_trainer(
        model_args, data_args, training_args, finetuning_args, callbacks
    )
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model()
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_state()
        if trainer.is_world_process_zero() and finetuning_args.plot_loss:
            plot_loss(training_args.output_dir, keys=["loss", "rewards/accuracies", "eval_loss"])

    if training_args.do_eval:
        metrics = trainer.evaluate(metric_key_prefix="eval")
        if reference_is_policy:  # rewards against itself are meaningless
            metrics = {key: value for key, value in metrics.items() if "rewards" not in key}
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)

    create_modelcard_and_push(trainer, model_args, data_args, training_args, finetuning_args)
