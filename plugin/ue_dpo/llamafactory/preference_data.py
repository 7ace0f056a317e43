"""LLaMA-Factory's preference datasets for `stage: ue_dpo`, with the rows it cannot train on named.

Before the model loads: a pair whose `chosen` and `rejected` are not two answers to one prompt (whole conversations,
say, with different prompts) is named with its dataset, row and the rule; an image that does not exist or does not
decode is named with its dataset, row and the fix (LLaMA-Factory's own errors name neither); a row with an empty chosen
or rejected response is refused (it would train on an end-of-sequence-only answer); a training set without any image
is warned about once.
"""

import json
import os
from pathlib import Path

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
    check_pair_format(data_args)
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


def check_pair_format(data_args) -> None:
    """Refuse, naming the first row and the rule, a local JSON ranking dataset whose `chosen` or `rejected` is not one
    answer to the row's prompt: LLaMA-Factory reads such rows as no pair (it drops them, then finds no valid sample)
    or fails to build the table (`DatasetGenerationError`); neither names the row."""
    for names in (data_args.dataset, data_args.eval_dataset):
        for name, attr in zip(names or [], get_dataset_list(names or [], data_args.dataset_dir)):
            if not attr.ranking or attr.load_from != "file":
                continue
            path = Path(data_args.dataset_dir) / attr.dataset_name
            files = sorted(path.iterdir()) if path.is_dir() else [path]
            for file in files:
                records = _json_records(file)
                if records is None:
                    continue
                problems = [(row, problem) for row, record in enumerate(records)
                            if (problem := pair_format_problem(record, attr)) is not None]
                if problems:
                    row, problem = problems[0]
                    more = (f" {len(problems) - 1} more row(s) of this file break the same rule."
                            if len(problems) > 1 else "")
                    raise UEDPOUserError(f"row {row} (counted from 0) of dataset `{name}` ({file}): {problem}{more}")


def _json_records(file: Path) -> list | None:
    """The records of a .json or .jsonl file, or None for another format or a file that does not parse (LLaMA-Factory
    names those)."""
    try:
        if file.suffix == ".json":
            records = json.loads(file.read_text())
        elif file.suffix == ".jsonl":
            records = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
        else:
            return None
    except (OSError, ValueError):
        return None
    return records if isinstance(records, list) else None


def pair_format_problem(record, attr) -> str | None:
    """Why one ranking record is not a pair of answers to one prompt in LLaMA-Factory's format, or None."""
    if not isinstance(record, dict):
        return None
    sides = {side: record.get(getattr(attr, side)) for side in ("chosen", "rejected")}
    if attr.formatting == "alpaca":
        expected, fits = "one string each", lambda value: isinstance(value, str)
        rule = ("LLaMA-Factory's alpaca ranking format gives the prompt once, in "
                f"`{attr.prompt}` (and `{attr.query}`), and `chosen` and `rejected` {expected}")
    else:
        role, content, assistant = attr.role_tag, attr.content_tag, attr.assistant_tag
        expected = f'one assistant message each ({{"{role}": "{assistant}", "{content}": "..."}})'
        fits = lambda value: isinstance(value, dict) and value.get(role) == assistant  # noqa: E731
        rule = (f"LLaMA-Factory's {attr.formatting} ranking format gives the prompt once, in `{attr.messages}`, and "
                f"`chosen` and `rejected` {expected}")
    if all(fits(value) for value in sides.values()):
        return None
    chosen, rejected = sides["chosen"], sides["rejected"]
    if isinstance(chosen, list) and isinstance(rejected, list):
        differ = next((index for index, (one, other) in enumerate(zip(chosen[:-1], rejected[:-1])) if one != other),
                      None if len(chosen) == len(rejected) else min(len(chosen), len(rejected)) - 1)
        if differ is not None:
            return (f"its `chosen` and `rejected` are conversations whose prompts differ (at message {differ}): a "
                    f"preference pair is two answers to one prompt. {rule}: keep only pairs whose prompts match, "
                    f"with the shared turns in the prompt and the last message of each in `chosen` and `rejected`.")
        return (f"its `chosen` and `rejected` are whole conversations. {rule}: move their shared turns into the "
                "prompt and keep the last message of each in `chosen` and `rejected`.")
    side = "chosen" if not fits(chosen) else "rejected"
    value = sides[side]
    found = "missing" if value is None else f"a {type(value).__name__} ({json.dumps(value)[:80]})"
    return f"its `{side}` is {found}. {rule}."
