"""LLaMA-Factory's preference datasets for `stage: ue_dpo`, with the rows it cannot train on named.

Before the model loads: an image that does not exist or does not decode is named with its dataset, row and the fix
(LLaMA-Factory's own error names neither); a row with an empty chosen or rejected response is refused (it would
train on an end-of-sequence-only answer); a training set without any image is warned about once.
"""

import os

from llamafactory.data import get_dataset
from llamafactory.data.loader import _load_single_dataset
from llamafactory.data.parser import get_dataset_list
from llamafactory.extras import logging
from llamafactory.extras.constants import IGNORE_INDEX

from ue_dpo.argument_checks import UEDPOUserError
from ue_dpo.images import describe_image_source, unreadable_image_reason

logger = logging.get_logger(__name__)
_SCAN_BATCH_ROWS = 512
_ROWS_NAMED = 5


def load_preference_datasets(template, model_args, data_args, training_args, finetuning_args, tokenizer_module):
    """`get_dataset(stage="rm")`, with its image errors naming the file and the row, and the rows checked."""
    try:
        dataset_module = get_dataset(template, model_args, data_args, training_args, stage="rm", **tokenizer_module)
    except OSError as error:  # PIL's errors (missing, unidentified, truncated file) name no row, often no file
        message = unreadable_image_message(data_args, model_args, training_args)
        if message is None:
            raise
        raise UEDPOUserError(message) from error
    training_image_rows = None
    for split, dataset in _datasets(dataset_module):
        image_rows = check_responses_and_count_images(dataset, tokenizer_module["tokenizer"], split)
        if split == "training":
            training_image_rows = image_rows
    method = finetuning_args.method
    if training_image_rows == 0 and method.reads_noised_image:
        logger.warning_rank0(
            f"No row of the training set has an image, so `stage: ue_dpo` with `ue_weighting: {method.name}` trains "
            f"it as plain DPO (λ = 1 on text-only rows) and logs no `{method.name}/*` token means. Give the rows their images (an `images` column and "
            "an <image> placeholder in the prompt), or use `stage: dpo`."
        )
    return dataset_module


def _datasets(dataset_module):
    for split in ("train_dataset", "eval_dataset"):
        datasets = dataset_module.get(split)
        if datasets is None or not hasattr(datasets, "__len__"):  # streaming: rows are read during training only
            continue
        named = datasets.items() if isinstance(datasets, dict) else [(None, datasets)]
        for name, dataset in named:
            yield ("training" if split == "train_dataset" else "evaluation") + (f" `{name}`" if name else ""), dataset


def check_responses_and_count_images(dataset, tokenizer, split: str) -> int:
    """Refuse rows whose chosen or rejected response has no text; return how many rows have an image."""
    empty, image_rows = [], 0
    columns = dataset.select_columns(["chosen_labels", "rejected_labels", "images"])
    for start in range(0, len(columns), _SCAN_BATCH_ROWS):
        rows = columns[start:start + _SCAN_BATCH_ROWS]
        image_rows += sum(1 for images in rows["images"] if images)
        for side in ("chosen", "rejected"):
            responses = [[token for token in labels if token != IGNORE_INDEX] for labels in rows[f"{side}_labels"]]
            texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
            empty += [(start + offset, side, rows["images"][offset])
                      for offset, text in enumerate(texts) if not text.strip()]
    if empty:
        named = "; ".join(
            f"row {row}, {side} (image: {', '.join(map(describe_image_source, images or [])) or 'none'})"
            for row, side, images in sorted(empty)[:_ROWS_NAMED]
        )
        more = f"; and {len(empty) - _ROWS_NAMED} more" if len(empty) > _ROWS_NAMED else ""
        raise UEDPOUserError(
            f"{len(empty)} response(s) of the {split} set are empty, which `stage: ue_dpo` would train as an "
            f"end-of-sequence-only answer: {named}{more} (rows of LLaMA-Factory's prepared set, counted from 0). "
            "Fill in or remove these responses (`ue-dpo data` skips such samples), or raise `cutoff_len` if a long "
            "prompt left no room for the response."
        )
    return image_rows


def unreadable_image_message(data_args, model_args, training_args) -> str | None:
    """The first image of the configured datasets that does not decode, named with its dataset, row and fix."""
    for names in (data_args.dataset, data_args.eval_dataset):
        for name, attr in zip(names or [], get_dataset_list(names or [], data_args.dataset_dir)):
            rows = _load_single_dataset(attr, model_args, data_args, training_args)
            for row, images in enumerate(rows["_images"]):
                for image in images or []:
                    reason = unreadable_image_reason(image)
                    if reason is None:
                        continue
                    if isinstance(image, str) and not os.path.isfile(image):
                        fix = (f"put it at {os.path.join(data_args.media_dir, image)}, or set `media_dir` (now "
                               f"{data_args.media_dir}) to the folder the image paths are relative to, or remove "
                               "the row")
                    else:
                        fix = "replace the file with a complete copy, or remove the row"
                    return (f"image {describe_image_source(image)} of row {row} (counted from 0) of dataset `{name}` "
                            f"cannot be read: {reason}. Fix: {fix}.")
    return None
