"""The dataset columns of the peer methods (m', V-DPO's image per response, MFPO's region masks), carried through
LLaMA-Factory 0.9.5's data pipeline to the collator, with the rows that lack them refused before training.

A dataset registers such a column as LLaMA-Factory registers its own, in the "columns" of its `dataset_info.json`
entry, `{"second_image": "<column in the file>"}`, in the alpaca and the sharegpt formats alike (the names are
`methods.base`'s `*_COLUMN`). LLaMA-Factory drops every column it does not know twice: `DatasetAttr.join` reads only
its own names from "columns", and `align_dataset` and `PairwiseDatasetProcessor.preprocess_dataset` each return only
their own columns. While `carried_image_columns` is entered (around the stage's `get_dataset` call, and only when the
method reads a column), three of its functions are wrapped: `get_dataset_list` as `loader` calls it (each entry's
columns of ours are read from `dataset_info.json`), `align_dataset` as `loader` calls it (the columns, their paths
resolved against `media_dir` as LLaMA-Factory resolves `images`, are checked row by row and added as `ue_<name>`),
and `PairwiseDatasetProcessor.preprocess_dataset` (which keeps `ue_<name>` of the rows it keeps). The collator finds
them in its features, as it finds `images`.

The `difficulty` column (an integer level >= 0 per row, registered the same way) is read by `ue_difficulty`: in the
same wrapped `align_dataset`, every row must have a level (a row without one is refused by row and column), and only
the rows of the requested level are kept, in every dataset loaded (training and `eval_dataset`), with a log line of
how many of how many. A dataset without a row of that level is refused, naming the levels it has.
"""

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from llamafactory.data import loader
from llamafactory.data.processor.pairwise import PairwiseDatasetProcessor
from llamafactory.extras import logging
from PIL import Image

from ue_dpo.argument_checks import UEDPOUserError
from ue_dpo.images import describe_image_source
from ue_dpo.methods.base import CHOSEN_IMAGE_COLUMN, REGION_MASK_COLUMN, REJECTED_IMAGE_COLUMN, SECOND_IMAGE_COLUMN

PREPARED_PREFIX = "ue_"  # the prepared dataset's column of `second_image` is `ue_second_image`
ROW_ID_COLUMNS = ("id", "idx")  # a row's id, named in refusals where the file has one
_COLUMNS_ATTRIBUTE = "ue_image_columns"  # set on LLaMA-Factory's DatasetAttr: (entry name, {ours: file's})
_ROWS_NAMED = 5
DIFFICULTY_COLUMN = "difficulty"
logger = logging.get_logger(f"llamafactory.{__name__}")  # under LLaMA-Factory's handler, which prints INFO
COLUMN_MEANINGS = {
    SECOND_IMAGE_COLUMN: "the second image m' of each row image",
    CHOSEN_IMAGE_COLUMN: "the image the chosen response is scored on",
    REJECTED_IMAGE_COLUMN: "the image the rejected response is scored on",
    REGION_MASK_COLUMN: "the region mask of each row image (white: the regions the noise fills)",
    DIFFICULTY_COLUMN: "each row's difficulty level, an integer >= 0, which `ue_difficulty` selects",
}


def prepared_column(column: str) -> str:
    return PREPARED_PREFIX + column


def registered_columns(dataset_dir: str | dict, name: str) -> dict[str, str]:
    """`{our column: the file's column}` of dataset `name` in `dataset_info.json` (LLaMA-Factory's `dataset_dir`, a
    folder or the info itself as a dict); empty where the entry registers none or the info is not local."""
    if isinstance(dataset_dir, dict):
        info = dataset_dir
    else:
        path = os.path.join(dataset_dir, "dataset_info.json")
        if not os.path.isfile(path):  # ONLINE or REMOTE: LLaMA-Factory's `columns` of its hub entry hold none
            return {}
        with open(path) as file:
            info = json.load(file)
    columns = info.get(name, {}).get("columns", {})
    return {column: columns[column] for column in COLUMN_MEANINGS if column in columns}


@contextmanager
def carried_image_columns(columns: tuple[str, ...], data_args, difficulty: int | None = None) -> Iterator[None]:
    """Carry `columns` (ours, `methods.base`'s names) from every configured dataset to the prepared rows, refusing a
    dataset that does not register one and the rows whose values are missing, not images, or not their row image's
    size; with `difficulty`, keep only the rows of that level. Nothing is wrapped without columns or difficulty."""
    if not columns and difficulty is None:
        yield
        return
    if data_args.streaming:
        read = [*columns, *([] if difficulty is None else [DIFFICULTY_COLUMN])]
        raise UEDPOUserError(
            f"the dataset column(s) {', '.join(f'`{column}`' for column in read)} are checked row by row before "
            "training, which `streaming: true` does not allow; remove `streaming`."
        )
    if difficulty is not None and data_args.tokenized_path is not None:
        raise UEDPOUserError(
            f"`ue_difficulty: {difficulty}` selects rows as LLaMA-Factory loads them, which a dataset saved at "
            f"`tokenized_path` ({data_args.tokenized_path}) skips, so its rows could be of any level; remove "
            "`tokenized_path`."
        )
    stock_list, stock_align = loader.get_dataset_list, loader.align_dataset
    stock_preprocess = PairwiseDatasetProcessor.preprocess_dataset

    def listed_with_columns(dataset_names, dataset_dir):
        attrs = stock_list(dataset_names, dataset_dir)
        for name, attr in zip(dataset_names or [], attrs):
            setattr(attr, _COLUMNS_ATTRIBUTE, (name, registered_columns(dataset_dir, name)))
        return attrs

    def aligned_with_columns(dataset, dataset_attr, data_args, training_args):
        aligned = stock_align(dataset, dataset_attr, data_args, training_args)
        name, registered = getattr(dataset_attr, _COLUMNS_ATTRIBUTE)
        values = {column: _file_column(dataset, name, registered, column) for column in columns}
        resolved = {
            column: [_resolved_sources(value, data_args.media_dir) for value in column_values]
            for column, column_values in values.items()
        }
        ids = next((dataset[column] for column in ROW_ID_COLUMNS if column in dataset.column_names), None)
        check_rows(name, registered, aligned["_images"], resolved, ids)
        for column, column_values in resolved.items():
            aligned = aligned.add_column(prepared_column(column), column_values)
        if difficulty is not None:
            levels = _file_column(dataset, name, registered, DIFFICULTY_COLUMN)
            kept = rows_of_level(name, registered[DIFFICULTY_COLUMN], levels, ids, difficulty)
            logger.info_rank0(
                f"ue_difficulty: {difficulty}: kept {len(kept)} of the {len(levels)} rows of dataset `{name}` "
                f"(column `{registered[DIFFICULTY_COLUMN]}`)"
            )
            aligned = aligned.select(kept)
        return aligned

    def preprocessed_with_columns(self, examples):
        model_inputs = stock_preprocess(self, examples)
        # the rows LLaMA-Factory 0.9.5 keeps (`preprocess_dataset`'s own test, which drops the others)
        kept = [
            row
            for row, (prompt, response) in enumerate(zip(examples["_prompt"], examples["_response"]))
            if len(prompt) % 2 == 1 and len(response) >= 2
        ]
        if len(kept) != len(model_inputs["chosen_input_ids"]):
            raise RuntimeError(
                "LLaMA-Factory's pairwise processor kept other rows than its 0.9.5 test keeps; the dataset columns "
                "of ue-dpo cannot follow them (see ue_dpo.versions for the supported release)."
            )
        for column in columns:
            model_inputs[prepared_column(column)] = [examples[prepared_column(column)][row] for row in kept]
        return model_inputs

    loader.get_dataset_list, loader.align_dataset = listed_with_columns, aligned_with_columns
    PairwiseDatasetProcessor.preprocess_dataset = preprocessed_with_columns
    try:
        yield
    finally:
        loader.get_dataset_list, loader.align_dataset = stock_list, stock_align
        PairwiseDatasetProcessor.preprocess_dataset = stock_preprocess


def _file_column(dataset, name: str, registered: dict[str, str], column: str) -> list:
    if column not in registered:
        raise UEDPOUserError(
            f"dataset `{name}` registers no `{column}` column ({COLUMN_MEANINGS[column]}), which the method reads. "
            f'Add `"{column}": "<its column in the file>"` to the "columns" of its entry in dataset_info.json.'
        )
    if registered[column] not in dataset.column_names:
        raise UEDPOUserError(
            f"dataset `{name}` registers `{column}` as its column `{registered[column]}`, which its file does not "
            f"have (its columns: {', '.join(dataset.column_names)}). Fix the name in dataset_info.json."
        )
    return dataset[registered[column]]


def row_name(row: int, ids: list | None) -> str:
    """A row as the refusals name it: its index among the loaded rows, and its id where the file has one."""
    return f"row {row} (counted from 0)" + ("" if ids is None else f", id {ids[row]!r},")


def first_problems(problems: list[str]) -> str:
    """The first `_ROWS_NAMED` problems, and how many more there are."""
    more = f"; and {len(problems) - _ROWS_NAMED} more" if len(problems) > _ROWS_NAMED else ""
    return "; ".join(problems[:_ROWS_NAMED]) + more


def rows_of_level(name: str, file_column: str, levels: list, ids: list | None, difficulty: int) -> list[int]:
    """The rows (counted from 0) whose level is `difficulty`, refusing rows without an integer level >= 0 and a
    dataset with no row of that level."""
    problems = []
    for row, level in enumerate(levels):
        # a file with one level written 1.5 loads every level as a float: 2.0 is still level 2
        if isinstance(level, bool) or not isinstance(level, int | float) or level < 0 or level != int(level):
            problems.append(f"{row_name(row, ids)}: {json.dumps(level, default=repr)[:40]}")
    if problems:
        raise UEDPOUserError(
            f"{len(problems)} row(s) of dataset `{name}` have no difficulty level in column `{file_column}` "
            f"(`{DIFFICULTY_COLUMN}`), which `ue_difficulty` reads: {first_problems(problems)}. Give every row an "
            "integer level >= 0, or remove these rows."
        )
    kept = [row for row, level in enumerate(levels) if level == difficulty]
    if not kept:
        raise UEDPOUserError(
            f"`ue_difficulty: {difficulty}`: dataset `{name}` has no row of that level in column `{file_column}` "
            f"(its levels: {sorted({int(level) for level in levels})}). Use one of its levels, or remove the dataset "
            "from this training."
        )
    return kept


def _resolved_sources(value: Any, media_dir: str) -> Any:
    """A column's value as a list of paths, each joined to `media_dir` where the file is there (LLaMA-Factory's rule
    for `images`); anything that is not a path or a list of paths is returned as it is, for `check_rows` to name."""
    if value is None or value == "":
        return []
    sources = value if isinstance(value, list) else [value]
    if not all(isinstance(source, str) for source in sources):
        return value
    return [
        os.path.join(media_dir, source) if os.path.isfile(os.path.join(media_dir, source)) else source
        for source in sources
    ]


def check_rows(
    name: str, registered: dict[str, str], row_images: list, values: dict[str, list], ids: list | None
) -> None:
    """Refuse, naming the row (counted from 0 among the dataset's loaded rows, and its id where the file has an `id` or
    `idx` column) and the column, each value that is not one existing image file per row image of that image's size.
    A row without an image needs none."""
    problems = []
    for row, images in enumerate(row_images):
        images = images or []
        for column, column_values in values.items():
            problem = _value_problem(column_values[row], images)
            if problem is not None:
                problems.append(
                    f"{row_name(row, ids)} of dataset `{name}`, column `{registered[column]}` (`{column}`): {problem}"
                )
    if problems:
        raise UEDPOUserError(
            f"{len(problems)} value(s) of the dataset columns the method reads cannot be used: "
            + first_problems(problems)
            + ". Each row with an image needs, per row image, the path of an image of that image's size (the "
            "paths relative to `media_dir`, as for `images`); fill them in or remove these rows."
        )


def _value_problem(sources: Any, images: list) -> str | None:
    if not isinstance(sources, list) or not all(isinstance(source, str) for source in sources):
        return f"{json.dumps(sources, default=repr)[:80]} is not a path or a list of paths"
    if len(sources) != len(images):
        if not sources:
            return "it is missing or empty"
        return f"it holds {len(sources)} image(s) for the row's {len(images)}"
    for source, image in zip(sources, images):
        if not os.path.isfile(source):
            return f"image {source} does not exist"
        try:
            with Image.open(source) as opened:
                size = opened.size
        except OSError as error:
            return f"image {source} cannot be read: {error}"
        row_size = _image_size(image)
        if row_size is not None and size != row_size:
            return (
                f"image {source} is {size[0]} x {size[1]} pixels, but the row's image {describe_image_source(image)} "
                f"is {row_size[0]} x {row_size[1]}"
            )
    return None


def _image_size(image: Any) -> tuple[int, int] | None:
    """(width, height) of a row image, or None where it does not open (LLaMA-Factory's loading names that file)."""
    if isinstance(image, Image.Image):
        return image.size
    if isinstance(image, dict):
        image = image.get("path") if image.get("bytes") is None else None
    if not isinstance(image, str):
        return None
    try:
        with Image.open(image) as opened:
            return opened.size
    except OSError:
        return None
