"""Rows `stage: ue_dpo` cannot train on are named before the model loads; metrics are never means over nothing."""

import json
import re
import shutil

import pytest
import torch

import ue_dpo
from tiny_training_config import tiny_training_config
from ue_dpo.synthetic.shapes import IMAGE_PLACEHOLDER, write_preference_dataset

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(autouse=True)
def strict_image_decoding(monkeypatch):
    """PIL's default. Importing lmms-eval (other tests do, in this process) turns truncated-image loading on for
    the whole process, which no training process has."""
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)


@pytest.fixture(scope="module")
def pristine_dataset_dir(tmp_path_factory):
    return write_preference_dataset(tmp_path_factory.mktemp("pristine"), n_pairs=8, seed=0)


@pytest.fixture
def dataset_dir(pristine_dataset_dir, tmp_path):
    """A private copy of the 8 shapes pairs (images `images/shapes_pref/0000N.png`, N = row) to damage."""
    return shutil.copytree(pristine_dataset_dir, tmp_path / "data")


def edit_records(dataset_dir, edit) -> None:
    path = dataset_dir / "shapes_pref.json"
    records = json.loads(path.read_text())
    edit(records)
    path.write_text(json.dumps(records))


def build_trainer(model_dir, dataset_dir, tmp_path, **overrides):
    ue_dpo.apply_llamafactory_integration()
    from llamafactory.hparams import get_train_args

    from ue_dpo.llamafactory.workflow import build_ue_dpo_trainer

    config = tiny_training_config("llava", model_dir, dataset_dir, tmp_path / "out", **overrides)
    model_args, data_args, training_args, finetuning_args, _ = get_train_args(config)
    return build_ue_dpo_trainer(model_args, data_args, training_args, finetuning_args)[0]


@pytest.fixture
def model_must_not_load(monkeypatch):
    from ue_dpo.llamafactory import workflow

    def load_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(workflow, "load_model", load_model)


def test_empty_responses_are_refused_with_their_rows_before_the_model_loads(
    tiny_llava_dir, dataset_dir, tmp_path, model_must_not_load
):
    def empty_two_responses(records):
        records[1]["chosen"]["content"] = ""
        records[4]["rejected"]["content"] = "  \n"

    edit_records(dataset_dir, empty_two_responses)
    with pytest.raises(ValueError) as error:
        build_trainer(tiny_llava_dir, dataset_dir, tmp_path)
    message = str(error.value)
    assert message.startswith(
        "2 response(s) of the training set are empty, which `stage: ue_dpo` would train as an "
        "end-of-sequence-only answer: "
    )
    assert f"row 1, chosen (image: {dataset_dir / 'images/shapes_pref/00001.png'})" in message
    assert f"row 4, rejected (image: {dataset_dir / 'images/shapes_pref/00004.png'})" in message
    assert "Fill in or remove these responses" in message


def test_a_truncated_png_is_named_with_its_dataset_row_and_fix(
    tiny_llava_dir, dataset_dir, tmp_path, model_must_not_load
):
    image = dataset_dir / "images/shapes_pref/00003.png"
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    with pytest.raises(ValueError) as error:
        build_trainer(tiny_llava_dir, dataset_dir, tmp_path)
    assert str(error.value) == (
        f"image {image} of row 3 (counted from 0) of dataset `shapes_pref` cannot be read: "
        "image file is truncated. Fix: replace the file with a complete copy, or remove the "
        "row."
    )


def test_a_missing_image_is_named_with_its_row_and_where_it_was_looked_for(
    tiny_llava_dir, dataset_dir, tmp_path, model_must_not_load
):
    (dataset_dir / "images/shapes_pref/00002.png").unlink()
    with pytest.raises(ValueError) as error:
        build_trainer(tiny_llava_dir, dataset_dir, tmp_path)
    message = str(error.value)
    assert message.startswith(
        "image images/shapes_pref/00002.png of row 2 (counted from 0) of dataset `shapes_pref` "
        "cannot be read: [Errno 2] No such file or directory"
    )
    assert (
        f"Fix: put it at {dataset_dir / 'images/shapes_pref/00002.png'}, or set `media_dir` (now {dataset_dir}) "
        "to the folder the image paths are relative to, or remove the row."
    ) in message


def test_an_image_that_breaks_after_preprocessing_is_named_by_the_collator(tiny_llava_dir, dataset_dir, tmp_path):
    trainer = build_trainer(tiny_llava_dir, dataset_dir, tmp_path)
    rows = [trainer.train_dataset[index] for index in range(2)]
    image = dataset_dir / "images/shapes_pref/00001.png"
    assert rows[1]["images"] == [str(image)]
    image.write_bytes(image.read_bytes()[:100])
    with pytest.raises(
        ValueError,
        match=f"training image {image} cannot be read: .*Replace the file with a complete "
        r"copy, or remove its row and prepare the data again \(`overwrite_cache",
    ):
        trainer.data_collator(rows)


def test_text_only_rows_warn_once_and_log_no_token_means(tiny_llava_dir, dataset_dir, tmp_path, caplog):
    def drop_images(records):
        for record in records:
            record["messages"][0]["content"] = record["messages"][0]["content"].replace(IMAGE_PLACEHOLDER, "")
            record["images"] = []

    edit_records(dataset_dir, drop_images)
    trainer = build_trainer(tiny_llava_dir, dataset_dir, tmp_path)
    warnings = [record.getMessage() for record in caplog.records if "No row of the training set" in record.getMessage()]
    assert warnings == [
        (
            "No row of the training set has an image, so `stage: ue_dpo` with `ue_weighting: ue` "
            "trains it as plain DPO (λ = 1 on text-only rows) and logs no `ue/*` token means. Give the "
            "rows their images (an `images` column and an <image> placeholder in the prompt), or use "
            "`stage: dpo`."
        )
    ]

    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[index] for index in range(2)]))
    with torch.no_grad():
        _, metrics = trainer.get_batch_loss_metrics(trainer.model, batch)
    assert metrics["ue/imageless_pairs"] == 2.0
    assert not [key for key in metrics if key.startswith("ue/") and key != "ue/imageless_pairs"]
    assert {"rewards/chosen", "logps/chosen"} <= metrics.keys()


def ranks_all_reducing(*rank_terms):
    """What `token_means` returns on each of several ranks, with the all-reduce done by hand."""
    from ue_dpo.llamafactory.trainer import token_means

    local = []
    for terms in rank_terms:
        token_means(terms, lambda sums: local.append(sums) or sums)
    summed = torch.stack(local).sum(0)
    return [token_means(terms, lambda sums: summed) for terms in rank_terms]


def test_a_metric_is_the_mean_over_all_ranks_tokens_and_left_out_on_every_rank_when_there_are_none():
    no_image = torch.zeros(1, 3, dtype=torch.bool)
    text_only_rank = {
        "ue/lambda_chosen_mean": (torch.full((1, 3), 1.0), no_image),
        "ue/u_mean": (torch.full((1, 3), float("nan")), no_image),
    }
    image_rank = {
        "ue/lambda_chosen_mean": (torch.tensor([[1.2, 1.0, 9.0]]), torch.tensor([[True, True, False]])),
        "ue/u_mean": (torch.tensor([[0.5, 0.0, 0.0]]), no_image),
    }
    # rank 0 has no image token: it reports rank 1's mean (1.2 + 1.0) / 2, not 0; u has no token on any rank
    assert ranks_all_reducing(text_only_rank, image_rank) == [{"ue/lambda_chosen_mean": pytest.approx(1.1)}] * 2
    assert ranks_all_reducing(text_only_rank, text_only_rank) == [{}, {}]


def chosen_and_rejected_as_conversations(records):
    """Row 2 as TRL's implicit-prompt format has it: whole conversations, here with different prompts."""
    user = records[2]["messages"][0]
    records[2]["chosen"] = [user, records[2]["chosen"]]
    records[2]["rejected"] = [{**user, "content": user["content"] + " Be brief."}, records[2]["rejected"]]


def every_row_as_conversations(records):
    for record in records:
        user = record["messages"][0]
        record["chosen"] = [user, record["chosen"]]
        record["rejected"] = [{**user, "content": "Name one shape."}, record["rejected"]]


@pytest.mark.parametrize(
    "edit",
    [chosen_and_rejected_as_conversations, every_row_as_conversations],
    ids=["one_row_DatasetGenerationError", "every_row_cannot_find_valid_samples"],
)
def test_a_pair_whose_chosen_and_rejected_have_different_prompts_is_named_with_its_row_and_the_rule(
    tiny_llava_dir, dataset_dir, tmp_path, model_must_not_load, edit
):
    edit_records(dataset_dir, edit)
    with pytest.raises(ValueError) as error:
        build_trainer(tiny_llava_dir, dataset_dir, tmp_path)
    message = str(error.value)
    first = 2 if edit is chosen_and_rejected_as_conversations else 0
    assert message.startswith(
        f"row {first} (counted from 0) of dataset `shapes_pref` "
        f"({dataset_dir / 'shapes_pref.json'}): its `chosen` and `rejected` are conversations "
        "whose prompts differ (at message 0): a preference pair is two answers to one prompt."
    ), message
    assert (
        "LLaMA-Factory's sharegpt ranking format gives the prompt once, in `messages`, and `chosen` and "
        '`rejected` one assistant message each ({"role": "assistant", "content": "..."})'
    ) in message


NEEDED_CUTOFF = re.compile(r"Raise `cutoff_len` to at least (\d+)")


def test_an_image_that_cutoff_len_would_cut_is_refused_with_its_row_and_the_cutoff_len_it_needs(
    tiny_llava_dir, dataset_dir, tmp_path, model_must_not_load
):
    def long_text_before_the_image(records):
        user = records[3]["messages"][0]
        user["content"] = "Look at the shapes and their colours closely. " * 40 + user["content"]

    edit_records(dataset_dir, long_text_before_the_image)
    with pytest.raises(ValueError) as error:
        build_trainer(tiny_llava_dir, dataset_dir, tmp_path, cutoff_len=256)
    message = str(error.value)
    assert message.startswith("1 pair(s) of the training set would lose image tokens to `cutoff_len: 256`"), message
    assert "row 3 (counted from 0) of dataset `shapes_pref`" in message
    assert "`Image features and image tokens do not match`" in message
    needed = int(NEEDED_CUTOFF.search(message).group(1))
    with pytest.raises(ValueError, match="would lose image tokens .*: row 3 "):
        build_trainer(tiny_llava_dir, dataset_dir, tmp_path, cutoff_len=needed - 1)
    with pytest.raises(AssertionError, match="the model was loaded"):  # the data passed its checks
        build_trainer(tiny_llava_dir, dataset_dir, tmp_path, cutoff_len=needed)


def test_responses_cut_by_cutoff_len_are_counted_in_one_warning_with_the_cutoff_len_that_keeps_them(
    tiny_llava_dir, dataset_dir, tmp_path, model_must_not_load, caplog
):
    def long_answers(records):
        records[5]["chosen"]["content"] = "A red square above a blue circle. " * 30
        records[6]["rejected"]["content"] = "A green triangle. " * 80

    edit_records(dataset_dir, long_answers)

    def truncation_warnings():
        return [record.getMessage() for record in caplog.records if "end-of-sequence" in record.getMessage()]

    with pytest.raises(AssertionError, match="the model was loaded"):
        build_trainer(tiny_llava_dir, dataset_dir, tmp_path, cutoff_len=256)
    [warning] = truncation_warnings()
    assert warning.startswith(
        "2 response(s) of the training set are longer than `cutoff_len: 256` leaves room for: "
        "LLaMA-Factory cuts them, and they train without their end-of-sequence token: "
        "row 5 (counted from 0) of dataset `shapes_pref`, chosen; row 6 (counted from 0) of "
        "dataset `shapes_pref`, rejected."
    ), warning
    needed = int(NEEDED_CUTOFF.search(warning).group(1))
    caplog.clear()
    with pytest.raises(AssertionError, match="the model was loaded"):
        build_trainer(tiny_llava_dir, dataset_dir, tmp_path, cutoff_len=needed)
    assert truncation_warnings() == []
    with pytest.raises(AssertionError, match="the model was loaded"):
        build_trainer(tiny_llava_dir, dataset_dir, tmp_path, cutoff_len=needed - 1)
    assert len(truncation_warnings()) == 1
