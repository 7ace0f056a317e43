"""The peer methods' dataset columns (m', V-DPO's image per response, MFPO's region masks) through LLaMA-Factory's
data pipeline: registered in dataset_info.json in the alpaca and sharegpt formats, carried to the prepared rows, and
the rows that lack them refused by row, id and column before the model loads."""

import json

import pytest

import ue_dpo
from image_column_data import FILE_COLUMNS, rejected_image_row, write_column_dataset
from tiny_training_config import tiny_training_config
from ue_dpo.argument_checks import UEDPOUserError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def prepared_datasets(model_dir, dataset_dir, tmp_path, **overrides):
    """The dataset module `stage: ue_dpo` prepares for a config, without loading the model."""
    ue_dpo.apply_llamafactory_integration()
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    from ue_dpo.llamafactory.preference_data import load_preference_datasets

    config = tiny_training_config("llava", model_dir, dataset_dir, tmp_path / "out", **overrides)
    model_args, data_args, training_args, finetuning_args, _ = get_train_args(config)
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    return load_preference_datasets(template, model_args, data_args, training_args, finetuning_args, tokenizer_module)


@pytest.fixture(scope="module")
def column_datasets(shapes_dataset_dir, tmp_path_factory):
    """`columns` (sharegpt) and `columns_alpaca`, the 8 shapes pairs with the four columns."""
    dataset_dir = tmp_path_factory.mktemp("columns")
    write_column_dataset(dataset_dir, shapes_dataset_dir, formatting="sharegpt", name="columns")
    write_column_dataset(dataset_dir, shapes_dataset_dir, formatting="alpaca", name="columns_alpaca")
    return dataset_dir


def test_columns_reach_the_prepared_rows_in_both_formats_and_llamafactory_is_left_as_it_was(
    tiny_llava_dir, column_datasets, shapes_dataset_dir, tmp_path
):
    from llamafactory.data import loader

    stock_align = loader.align_dataset
    prepared = prepared_datasets(
        tiny_llava_dir,
        column_datasets,
        tmp_path,
        dataset="columns,columns_alpaca",
        ue_weighting="vdpo",
        vdpo_response_images="columns",
    )["train_dataset"]
    assert loader.align_dataset is stock_align
    images = [str(shapes_dataset_dir / f"images/shapes_pref/{row:05d}.png") for row in range(8)]
    pairs = {(row["images"][0], row["ue_chosen_image"][0], row["ue_rejected_image"][0]) for row in prepared}
    expected = {(images[row], images[row], images[rejected_image_row(row, 8)]) for row in range(8)}
    assert len(prepared) == 16 and pairs == expected  # both files' rows carry their own
    masks = prepared_datasets(
        tiny_llava_dir,
        column_datasets,
        tmp_path,
        dataset="columns_alpaca",
        ue_weighting="mfpo",
        mfpo_second_image="region_mask",
    )["train_dataset"]
    # a relative path is resolved against media_dir, as LLaMA-Factory resolves `images`
    assert masks["ue_region_mask"] == [[str(column_datasets / f"masks/{row}.png")] for row in range(8)]
    assert "ue_chosen_image" not in masks.column_names


def test_rows_that_lack_the_column_are_refused_with_row_id_and_column_before_the_model_loads(
    tiny_llava_dir, column_datasets, shapes_dataset_dir, tmp_path
):
    path = column_datasets / "columns.json"
    records = json.loads(path.read_text())
    records[2][FILE_COLUMNS["second_image"]] = None
    records[5][FILE_COLUMNS["second_image"]] = ["images/nowhere.png"]
    records[6][FILE_COLUMNS["second_image"]] = [str(column_datasets / "masks/0.png"), records[6]["images"][0]]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "columns.json").write_text(json.dumps(records))
    info = json.loads((column_datasets / "dataset_info.json").read_text())
    (tmp_path / "data" / "dataset_info.json").write_text(json.dumps(info))
    with pytest.raises(UEDPOUserError) as error:
        prepared_datasets(
            tiny_llava_dir,
            tmp_path / "data",
            tmp_path,
            dataset="columns",
            ue_weighting="mdpo",
            mdpo_second_image="column",
        )
    assert str(error.value) == (
        "3 value(s) of the dataset columns the method reads cannot be used: "
        "row 2 (counted from 0), id 'pair-2', of dataset `columns`, column `m_prime` (`second_image`): it is missing "
        "or empty; "
        "row 5 (counted from 0), id 'pair-5', of dataset `columns`, column `m_prime` (`second_image`): image "
        "images/nowhere.png does not exist; "
        "row 6 (counted from 0), id 'pair-6', of dataset `columns`, column `m_prime` (`second_image`): it holds 2 "
        "image(s) for the row's 1. Each row with an image needs, per row image, the path of an image of that "
        "image's size (the paths relative to `media_dir`, as for `images`); fill them in or remove these rows."
    )


def test_an_image_of_another_size_and_a_dataset_without_the_column_are_refused(
    tiny_llava_dir, column_datasets, shapes_dataset_dir, tmp_path
):
    from PIL import Image

    data = tmp_path / "data"
    records = write_column_dataset(data, shapes_dataset_dir, name="columns")
    Image.new("RGB", (28, 56)).save(data / "narrow.png")
    records[3][FILE_COLUMNS["region_mask"]] = "narrow.png"
    (data / "columns.json").write_text(json.dumps(records))
    with pytest.raises(
        UEDPOUserError,
        match=r"row 3 \(counted from 0\), id 'pair-3', of dataset `columns`, column "
        rf"`objects_mask` \(`region_mask`\): image {data / 'narrow.png'} is 28 x 56 pixels, but the "
        r"row's image .*00003.png is 56 x 56",
    ):
        prepared_datasets(
            tiny_llava_dir, data, tmp_path, dataset="columns", ue_weighting="mfpo", mfpo_second_image="region_mask"
        )
    with pytest.raises(UEDPOUserError) as error:
        prepared_datasets(tiny_llava_dir, shapes_dataset_dir, tmp_path, ue_weighting="chip", chip_second_image="column")
    assert str(error.value) == (
        "dataset `shapes_pref` registers no `second_image` column (the second image m' of each row image), which "
        'the method reads. Add `"second_image": "<its column in the file>"` to the "columns" of its entry in '
        "dataset_info.json."
    )


def test_prepared_rows_without_the_column_and_images_broken_since_are_refused_by_the_collator(tmp_path):
    """Rows prepared without the column (a `tokenized_path` saved by another method's run) and a column's file that
    no longer decodes are named, not skipped."""
    from ue_dpo.llamafactory.collator import column_images

    with pytest.raises(
        UEDPOUserError,
        match=r"the prepared rows hold no `ue_region_mask` column \(the dataset's "
        r"`region_mask`\), which the method reads: .*`tokenized_path`",
    ):
        column_images([{"images": ["a.png"]}], "region_mask")

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(UEDPOUserError, match=f"image {broken} of the dataset's `second_image` column cannot be read"):
        column_images([{"ue_second_image": [str(broken)]}], "second_image")
