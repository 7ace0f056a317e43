"""MFPO's easy-to-hard schedule: the `difficulty` column, `ue_difficulty`'s row selection in both formats and its
refusals (the data side, without a model). The staged runs of `ue-dpo run` are in test_experiment_sweep.py."""

import json

import pytest

from image_column_data import write_column_dataset
from test_image_columns import prepared_datasets
from ue_dpo.argument_checks import UEDPOUserError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# the 8 shapes pairs' levels, written to the file's column `level`; counted by hand: level 0 is rows 0, 3 and 6,
# level 1 rows 1 and 4, level 2 rows 2, 5 and 7
LEVELS = [0, 1, 2, 0, 1, 2, 0, 2]


def write_levelled(dataset_dir, shapes_dataset_dir, levels, *, formatting, name, register=True):
    records = write_column_dataset(dataset_dir, shapes_dataset_dir, formatting=formatting, name=name)
    for record, level in zip(records, levels):
        if level is not ...:
            record["level"] = level
    (dataset_dir / f"{name}.json").write_text(json.dumps(records))
    info = json.loads((dataset_dir / "dataset_info.json").read_text())
    if register:
        info[name]["columns"]["difficulty"] = "level"
    (dataset_dir / "dataset_info.json").write_text(json.dumps(info))


@pytest.fixture(scope="module")
def levelled(shapes_dataset_dir, tmp_path_factory):
    dataset_dir = tmp_path_factory.mktemp("levelled")
    write_levelled(dataset_dir, shapes_dataset_dir, LEVELS, formatting="sharegpt", name="levels")
    write_levelled(dataset_dir, shapes_dataset_dir, LEVELS, formatting="alpaca", name="levels_alpaca")
    return dataset_dir


def image_rows(dataset) -> list[int]:
    """The shapes row of each prepared row, read from its image's file name."""
    return [int(row["images"][0].rsplit("/", 1)[1].removesuffix(".png")) for row in dataset]


def test_ue_difficulty_keeps_the_rows_of_its_level_in_both_formats_and_logs_the_count(
    tiny_llava_dir, levelled, tmp_path, monkeypatch
):
    from ue_dpo.llamafactory import image_columns

    logged = []
    monkeypatch.setattr(image_columns.logger, "info_rank0", logged.append)
    for name in ("levels", "levels_alpaca"):
        prepared = prepared_datasets(tiny_llava_dir, levelled, tmp_path, dataset=name, ue_difficulty=2)
        assert image_rows(prepared["train_dataset"]) == [2, 5, 7]
    both = prepared_datasets(tiny_llava_dir, levelled, tmp_path, dataset="levels,levels_alpaca", ue_difficulty=1)
    assert image_rows(both["train_dataset"]) == [1, 4, 1, 4]
    assert logged[-2:] == [
        "ue_difficulty: 1: kept 2 of the 8 rows of dataset `levels` (column `level`)",
        "ue_difficulty: 1: kept 2 of the 8 rows of dataset `levels_alpaca` (column `level`)",
    ]
    # without the key, every row is trained and the column is not read
    assert len(prepared_datasets(tiny_llava_dir, levelled, tmp_path, dataset="levels")["train_dataset"]) == 8


def test_rows_without_a_level_an_absent_level_and_an_unregistered_column_are_refused(
    tiny_llava_dir, shapes_dataset_dir, levelled, tmp_path
):
    broken = tmp_path / "broken"
    write_levelled(broken, shapes_dataset_dir, [0, None, 2, ..., 1, -1, 0, 1.5], formatting="alpaca", name="b")
    with pytest.raises(UEDPOUserError) as error:
        prepared_datasets(tiny_llava_dir, broken, tmp_path, dataset="b", ue_difficulty=0)
    assert str(error.value) == (
        "4 row(s) of dataset `b` have no difficulty level in column `level` (`difficulty`), which `ue_difficulty` "
        "reads: row 1 (counted from 0), id 'pair-1',: null; row 3 (counted from 0), id 'pair-3',: null; "
        "row 5 (counted from 0), id 'pair-5',: -1.0; row 7 (counted from 0), id 'pair-7',: 1.5. Give every row "
        "an integer level >= 0, or remove these rows."
    )
    with pytest.raises(
        UEDPOUserError,
        match=r"^`ue_difficulty: 3`: dataset `levels` has no row of that level in "
        r"column `level` \(its levels: \[0, 1, 2\]\)",
    ):
        prepared_datasets(tiny_llava_dir, levelled, tmp_path, dataset="levels", ue_difficulty=3)
    plain = tmp_path / "plain"
    write_levelled(plain, shapes_dataset_dir, LEVELS, formatting="sharegpt", name="p", register=False)
    with pytest.raises(
        UEDPOUserError,
        match=r"^dataset `p` registers no `difficulty` column \(each row's difficulty "
        r"level, an integer >= 0, which `ue_difficulty` selects\)",
    ):
        prepared_datasets(tiny_llava_dir, plain, tmp_path, dataset="p", ue_difficulty=0)
    with pytest.raises(UEDPOUserError, match=r"^`ue_difficulty: -1` must be an integer >= 0"):
        prepared_datasets(tiny_llava_dir, levelled, tmp_path, dataset="levels", ue_difficulty=-1)
