"""LLaMA-Factory's preference datasets for `stage: ue_dpo`, with the rows it cannot train on named.

Before the model loads: a pair whose `chosen` and `rejected` are not two answers to one prompt (whole conversations,
say, with different prompts) is named with its dataset, row and the rule; an image that does not exist or does not
decode is named with its dataset, row and the fix (LLaMA-Factory's own errors name neither); a pair whose image tokens
`cutoff_len` would cut is refused, and responses it cuts are counted in one warning, both with the rows and the
`cutoff_len` that keeps them whole; a row with an empty chosen or rejected response is refused (it would train on an
end-of-sequence-only answer); a training set without any image is warned about once. The dataset columns the method
reads (`image_columns`) are carried to the prepared rows, and the rows that lack them refused.
"""

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path

from llamafactory.data import get_dataset
from llamafactory.data.loader import _load_single_dataset
from llamafactory.data.parser import get_dataset_list
from llamafactory.data.processor.pairwise import PairwiseDatasetProcessor
from llamafactory.data.processor.processor_utils import infer_seqlen
from llamafactory.extras import logging
from llamafactory.extras.constants import IGNORE_INDEX

from ue_dpo.argument_checks import UEDPOUserError
from ue_dpo.images import describe_image_source, unreadable_image_reason
from ue_dpo.llamafactory.image_columns import carried_image_columns

logger = logging.get_logger(__name__)
_SCAN_BATCH_ROWS = 512
_ROWS_NAMED = 5


def load_preference_datasets(template, model_args, data_args, training_args, finetuning_args, tokenizer_module):
    """`get_dataset(stage="rm")`, with its image errors naming the file and the row, and the rows checked."""
    check_pair_format(data_args)
    method = finetuning_args.method
    try:
        with carried_image_columns(method.data_columns, data_args, finetuning_args.ue_difficulty):
            dataset_module = get_dataset(template, model_args, data_args, training_args, stage="rm", **tokenizer_module)
    except OSError as error:  # PIL's errors (missing, unidentified, truncated file) name no row, often no file
        message = unreadable_image_message(data_args, model_args, training_args)
        if message is None:
            raise
        raise UEDPOUserError(message) from error
    check_truncation(dataset_module, template, tokenizer_module, model_args, data_args, training_args)
    training_image_rows = None
    for split, dataset in _datasets(dataset_module):
        image_rows = check_responses_and_count_images(dataset, tokenizer_module["tokenizer"], split)
        if split == "training":
            training_image_rows = image_rows
    if training_image_rows == 0 and method.reads_noised_image:
        logger.warning_rank0(
            f"No row of the training set has an image, so `stage: ue_dpo` with `ue_weighting: {method.name}` trains "
            f"it as plain DPO (λ = 1 on text-only rows) and logs no `{method.name}/*` token means. Give the rows their "
            "images (an `images` column and "
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
        rows = columns[start : start + _SCAN_BATCH_ROWS]
        image_rows += sum(1 for images in rows["images"] if images)
        for side in ("chosen", "rejected"):
            responses = [[token for token in labels if token != IGNORE_INDEX] for labels in rows[f"{side}_labels"]]
            texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
            empty += [
                (start + offset, side, rows["images"][offset]) for offset, text in enumerate(texts) if not text.strip()
            ]
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
                        fix = (
                            f"put it at {os.path.join(data_args.media_dir, image)}, or set `media_dir` (now "
                            f"{data_args.media_dir}) to the folder the image paths are relative to, or remove "
                            "the row"
                        )
                    else:
                        fix = "replace the file with a complete copy, or remove the row"
                    return (
                        f"image {describe_image_source(image)} of row {row} (counted from 0) of dataset `{name}` "
                        f"cannot be read: {reason}. Fix: {fix}."
                    )
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
                problems = [
                    (row, problem)
                    for row, record in enumerate(records)
                    if (problem := pair_format_problem(record, attr)) is not None
                ]
                if problems:
                    row, problem = problems[0]
                    more = (
                        f" {len(problems) - 1} more row(s) of this file break the same rule."
                        if len(problems) > 1
                        else ""
                    )
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
        rule = (
            "LLaMA-Factory's alpaca ranking format gives the prompt once, in "
            f"`{attr.prompt}` (and `{attr.query}`), and `chosen` and `rejected` {expected}"
        )
    else:
        role, content, assistant = attr.role_tag, attr.content_tag, attr.assistant_tag
        expected = f'one assistant message each ({{"{role}": "{assistant}", "{content}": "..."}})'
        answer_roles = (assistant, attr.function_tag)  # the roles LLaMA-Factory's converter takes for an answer
        fits = lambda value: isinstance(value, dict) and value.get(role) in answer_roles  # noqa: E731
        rule = (
            f"LLaMA-Factory's {attr.formatting} ranking format gives the prompt once, in `{attr.messages}`, and "
            f"`chosen` and `rejected` {expected}"
        )
    if all(fits(value) for value in sides.values()):
        return None
    chosen, rejected = sides["chosen"], sides["rejected"]
    if isinstance(chosen, list) and isinstance(rejected, list):
        differ = next(
            (index for index, (one, other) in enumerate(zip(chosen[:-1], rejected[:-1])) if one != other),
            None if len(chosen) == len(rejected) else min(len(chosen), len(rejected)) - 1,
        )
        if differ is not None:
            return (
                f"its `chosen` and `rejected` are conversations whose prompts differ (at message {differ}): a "
                f"preference pair is two answers to one prompt. {rule}: keep only pairs whose prompts match, "
                f"with the shared turns in the prompt and the last message of each in `chosen` and `rejected`."
            )
        return (
            f"its `chosen` and `rejected` are whole conversations. {rule}: move their shared turns into the "
            "prompt and keep the last message of each in `chosen` and `rejected`."
        )
    side = "chosen" if not fits(chosen) else "rejected"
    value = sides[side]
    found = "missing" if value is None else f"a {type(value).__name__} ({json.dumps(value)[:80]})"
    return f"its `{side}` is {found}. {rule}."


@dataclass(frozen=True)
class _SourceRow:
    """A dataset row as LLaMA-Factory encodes it before `cutoff_len` truncates it."""

    where: str  # "row 3 (counted from 0) of dataset `name`"
    prompt_len: int
    chosen_len: int
    rejected_len: int
    last_image_token: int | None  # index in the prompt, None without image tokens


def check_truncation(dataset_module, template, tokenizer_module, model_args, data_args, training_args) -> None:
    """Refuse pairs whose image tokens `cutoff_len` would cut (training would fail on them with `Image features and
    image tokens do not match`, naming no row), and warn once about responses it cuts (they train without their
    end-of-sequence token), each with the dataset row and the `cutoff_len` that keeps them whole.

    LLaMA-Factory 0.9.5 (`PairwiseDatasetProcessor`, `infer_seqlen`) truncates a pair only when its longer row would
    exceed `cutoff_len`, so only prepared rows of that length are encoded again, untruncated, to compare."""
    cutoff = data_args.cutoff_len
    suspects = []  # (split, chosen_input_ids, rejected_input_ids, images)
    for split, dataset in _datasets(dataset_module):
        columns = dataset.select_columns(["chosen_input_ids", "rejected_input_ids", "images"])
        for start in range(0, len(columns), _SCAN_BATCH_ROWS):
            rows = columns[start : start + _SCAN_BATCH_ROWS]
            suspects += [
                (split, chosen, rejected, images)
                for chosen, rejected, images in zip(
                    rows["chosen_input_ids"], rows["rejected_input_ids"], rows["images"]
                )
                if max(len(chosen), len(rejected)) >= cutoff
            ]
    if not suspects:
        return
    sources = _untruncated_rows(
        {_images_key(images) for *_, images in suspects},
        template,
        tokenizer_module,
        model_args,
        data_args,
        training_args,
    )
    cut_images, cut_responses, keeps_responses = [], [], []
    for split, chosen, rejected, _ in suspects:
        source = sources.get((tuple(chosen), tuple(rejected)))
        if source is None:  # not found among the configured datasets' rows (a `tokenized_path` set, say)
            continue
        target_len = max(source.chosen_len, source.rejected_len)
        kept_prompt, kept_response = infer_seqlen(source.prompt_len, target_len, cutoff)
        if source.last_image_token is not None and kept_prompt <= source.last_image_token:
            needed = _smallest_cutoff(source.prompt_len, target_len, lambda prompt, _: prompt > source.last_image_token)
            cut_images.append((split, source, kept_prompt, needed))
        cut = [
            side
            for side, length in (("chosen", source.chosen_len), ("rejected", source.rejected_len))
            if kept_response < length
        ]
        if cut:
            cut_responses += [(split, source.where, side) for side in cut]
            keeps_responses.append(
                _smallest_cutoff(source.prompt_len, target_len, lambda _, response: response >= target_len)
            )
    if cut_images:
        splits = sorted({split for split, *_ in cut_images})
        named = "; ".join(
            f"{source.where} keeps {kept} of its {source.prompt_len} prompt tokens, and its image tokens end at "
            f"token {source.last_image_token + 1} (it needs `cutoff_len` >= {needed})"
            for _, source, kept, needed in cut_images[:_ROWS_NAMED]
        )
        more = f"; and {len(cut_images) - _ROWS_NAMED} more" if len(cut_images) > _ROWS_NAMED else ""
        raise UEDPOUserError(
            f"{len(cut_images)} pair(s) of the {' and '.join(splits)} set would lose image tokens to `cutoff_len: "
            f"{cutoff}` (LLaMA-Factory truncates a long prompt from its end to leave room for the response), and "
            f"training would fail on them with `Image features and image tokens do not match`: {named}{more}. "
            f"Raise `cutoff_len` to at least {max(needed for *_, needed in cut_images)}, or shorten these prompts."
        )
    if cut_responses:
        splits = sorted({split for split, *_ in cut_responses})
        named = "; ".join(f"{where}, {side}" for _, where, side in cut_responses[:_ROWS_NAMED])
        more = f"; and {len(cut_responses) - _ROWS_NAMED} more" if len(cut_responses) > _ROWS_NAMED else ""
        logger.warning_rank0(
            f"{len(cut_responses)} response(s) of the {' and '.join(splits)} set are longer than `cutoff_len: "
            f"{cutoff}` leaves room for: LLaMA-Factory cuts them, and they train without their end-of-sequence "
            f"token: {named}{more}. Raise `cutoff_len` to at least {max(keeps_responses)} to train every response "
            "whole (stock DPO cuts them too)."
        )


def _images_key(images) -> tuple:
    return tuple(str(image) for image in images or [])


def _smallest_cutoff(prompt_len: int, target_len: int, keeps) -> int:
    """The smallest `cutoff_len` from which on every larger one, truncated as LLaMA-Factory does, `keeps(kept prompt
    tokens, kept response tokens)`; prompt + response tokens keep everything."""
    cutoff = prompt_len + target_len
    while cutoff > 1 and keeps(*infer_seqlen(prompt_len, target_len, cutoff - 1)):
        cutoff -= 1
    return cutoff


def _untruncated_rows(
    image_keys: set[tuple], template, tokenizer_module, model_args, data_args, training_args
) -> dict[tuple, _SourceRow]:
    """The configured datasets' rows whose images are among `image_keys`, encoded as LLaMA-Factory encodes a pair
    but without truncation, keyed by the (chosen, rejected) input ids that `cutoff_len` truncates them to."""
    tokenizer = tokenizer_module["tokenizer"]
    untruncated_args = copy.copy(data_args)
    untruncated_args.cutoff_len = 1 << 40
    encoder = PairwiseDatasetProcessor(
        template=template, tokenizer=tokenizer, processor=tokenizer_module.get("processor"), data_args=untruncated_args
    )
    image_token = template.mm_plugin.image_token
    image_token_id = None if image_token is None else tokenizer.convert_tokens_to_ids(image_token)
    rows = {}
    for names in (data_args.dataset, data_args.eval_dataset):
        for name, attr in zip(names or [], get_dataset_list(names or [], data_args.dataset_dir)):
            dataset = _load_single_dataset(attr, model_args, data_args, training_args)
            for row, images in enumerate(dataset["_images"]):
                if _images_key(images) not in image_keys:
                    continue
                example = dataset[row]
                if len(example["_prompt"]) % 2 != 1 or len(example["_response"]) < 2:
                    continue  # LLaMA-Factory drops it
                chosen_ids, chosen_labels, rejected_ids, rejected_labels = encoder._encode_data_example(
                    prompt=example["_prompt"],
                    response=example["_response"],
                    system=example["_system"],
                    tools=example["_tools"],
                    images=example["_images"] or [],
                    videos=example["_videos"] or [],
                    audios=example["_audios"] or [],
                )
                prompt_len = sum(1 for label in chosen_labels if label == IGNORE_INDEX)
                prompt = chosen_ids[:prompt_len]
                image_positions = [index for index, token in enumerate(prompt) if token == image_token_id]
                source = _SourceRow(
                    f"row {row} (counted from 0) of dataset `{name}`",
                    prompt_len,
                    len(chosen_ids) - prompt_len,
                    len(rejected_ids) - prompt_len,
                    image_positions[-1] if image_positions else None,
                )
                kept_prompt, kept_response = infer_seqlen(
                    prompt_len, max(source.chosen_len, source.rejected_len), data_args.cutoff_len
                )
                key = (
                    tuple(prompt[:kept_prompt] + chosen_ids[prompt_len:][:kept_response]),
                    tuple(prompt[:kept_prompt] + rejected_ids[prompt_len:][:kept_response]),
                )
                rows.setdefault(key, source)
    return rows
