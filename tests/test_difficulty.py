"""MFPO's easy-to-hard schedule: the `difficulty` column, `ue_difficulty`'s row selection in both formats and its
refusals (the data side, without a model). The staged runs of `ue-dpo run` are in test_experiment_sweep.py."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from image_column_data import write_column_dataset
from llamafactory_runs import run_train
from test_experiment import VALID
from test_experiment_sweep import StandIns
from test_image_columns import prepared_datasets
from tiny_training_config import tiny_training_config
from ue_dpo.argument_checks import UEDPOUserError
from ue_dpo.experiment import runner, sweep
from ue_dpo.experiment.config import ExperimentConfigError, parse_experiment
from ue_dpo.experiment.stages import RunInterrupted

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
    with pytest.raises(
        UEDPOUserError,
        match=r"^`ue_difficulty: 0` selects rows as LLaMA-Factory loads them, .*"
        r"remove `tokenized_path`",
    ):
        prepared_datasets(
            tiny_llava_dir,
            levelled,
            tmp_path,
            dataset="levels",
            ue_difficulty=0,
            tokenized_path=str(tmp_path / "tokenized"),
        )
    with pytest.raises(UEDPOUserError, match=r"^`ue_difficulty: -1` must be an integer >= 0"):
        prepared_datasets(tiny_llava_dir, levelled, tmp_path, dataset="levels", ue_difficulty=-1)


# the staged runs of `ue-dpo run`, with llamafactory-cli and lmms-eval replaced by test_experiment_sweep's stand-ins


@pytest.fixture
def staged_dir(tmp_path):
    config = {"stage": "ue_dpo", "do_train": True, "ue_weighting": "uniform", "dataset": "levels"}
    (tmp_path / "staged.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "dpo.yaml").write_text(yaml.safe_dump({"stage": "dpo", "do_train": True}))
    return tmp_path


def staged_experiment(base_dir, out, *, levels=(2, 0, 1), sweep=None, **run):
    """`base`, the world's model; `mfpo` trained in stages from it, seeds 0 and 1; `after`, trained from mfpo."""
    world = {"model_name_or_path": "${synthetic.model}", "dataset_dir": "${synthetic.data}"}
    raw = {
        **VALID,
        "output": str(out),
        "seeds": [0, 1],
        "reported": [],
        "runs": [
            {"name": "base", "checkpoint": "${synthetic.model}"},
            {
                "name": "mfpo",
                "train": "staged.yaml",
                "overrides": world,
                "stages": {"by": "difficulty", "levels": list(levels)},
                **run,
            },
            {"name": "after", "train": "dpo.yaml", "overrides": {**world, "model_name_or_path": "${runs.mfpo}"}},
        ],
        **({} if sweep is None else {"sweep": sweep}),
    }
    return parse_experiment(raw, base_dir=base_dir)


def stand_in_config(output_dir: Path) -> dict:
    return json.loads((output_dir / "stand_in.json").read_text())


def test_a_staged_run_trains_its_levels_in_order_each_from_the_previous_and_is_its_last_stage(
    staged_dir, tmp_path, monkeypatch
):
    tools = StandIns(monkeypatch)
    out = tmp_path / "out"
    runner.ExperimentRunner(staged_experiment(staged_dir, out)).run()
    runs = out / "runs"
    assert tools.trained == [
        runs / "mfpo@seed0@difficulty2",
        runs / "mfpo@seed0@difficulty0",
        runs / "mfpo@seed0@difficulty1",
        runs / "mfpo@seed1@difficulty2",
        runs / "mfpo@seed1@difficulty0",
        runs / "mfpo@seed1@difficulty1",
        runs / "after@seed0",
        runs / "after@seed1",
    ]
    model = str(out / "synthetic" / "model")
    for seed in (0, 1):
        stages = [stand_in_config(runs / f"mfpo@seed{seed}@difficulty{level}") for level in (2, 0, 1)]
        assert [stage["ue_difficulty"] for stage in stages] == [2, 0, 1]
        assert [stage["seed"] for stage in stages] == [seed] * 3
        assert [stage["model_name_or_path"] for stage in stages] == [model] * 3  # LoRA: the same base model
        # the first stage creates the adapter, each later one trains the adapter the stage before it wrote
        assert "adapter_name_or_path" not in stages[0] and "create_new_adapter" not in stages[0]
        assert [(stage["adapter_name_or_path"], stage["create_new_adapter"]) for stage in stages[1:]] == [
            (str(runs / f"mfpo@seed{seed}@difficulty2"), False),
            (str(runs / f"mfpo@seed{seed}@difficulty0"), False),
        ]
        # the run's model, for its evaluation and for ${runs.mfpo}, is its last stage's
        assert tools.model_args[f"mfpo@seed{seed}"]["pretrained"] == str(runs / f"mfpo@seed{seed}@difficulty1")
        assert stand_in_config(runs / f"after@seed{seed}")["model_name_or_path"] == str(
            runs / f"mfpo@seed{seed}@difficulty1"
        )
    # each stage's marker: its own digest, which covers the stage before it
    markers = [
        json.loads((out / "state" / f"train-mfpo@seed0@difficulty{level}.done.json").read_text()) for level in (2, 0, 1)
    ]
    assert "continues" not in markers[0]
    assert [marker["continues"] for marker in markers[1:]] == [markers[0]["digest"], markers[1]["digest"]]
    assert len({marker["digest"] for marker in markers}) == 3

    tools.trained.clear()
    runner.ExperimentRunner(staged_experiment(staged_dir, out)).run()
    assert tools.trained == []  # every stage is done


def test_full_tuning_stages_start_from_the_previous_model_with_the_first_stage_model_as_reference(
    staged_dir, tmp_path, monkeypatch
):
    StandIns(monkeypatch)
    out = tmp_path / "out"
    raw_run = {
        "overrides": {
            "finetuning_type": "full",
            "model_name_or_path": "${synthetic.model}",
            "dataset_dir": "${synthetic.data}",
        }
    }
    runner.ExperimentRunner(staged_experiment(staged_dir, out, levels=(0, 1), **raw_run)).run()
    first, second = (stand_in_config(out / "runs" / f"mfpo@seed0@difficulty{level}") for level in (0, 1))
    assert "ref_model" not in first and first["model_name_or_path"] == str(out / "synthetic" / "model")
    assert second["model_name_or_path"] == str(out / "runs" / "mfpo@seed0@difficulty0")
    assert second["ref_model"] == str(out / "synthetic" / "model") and "adapter_name_or_path" not in second


def test_an_interrupted_staged_run_resumes_in_its_stage_and_a_retrained_stage_retrains_the_later_ones(
    staged_dir, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    runs = out / "runs"
    tools = StandIns(monkeypatch, interrupt_at="runs/mfpo@seed0@difficulty0")
    with pytest.raises(RunInterrupted):
        runner.ExperimentRunner(staged_experiment(staged_dir, out)).run()
    assert tools.trained == [runs / "mfpo@seed0@difficulty2"]
    checkpoint = runs / "mfpo@seed0@difficulty0" / "checkpoint-3"  # what the interrupted training had saved
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")

    tools = StandIns(monkeypatch)
    runner.ExperimentRunner(staged_experiment(staged_dir, out)).run()
    assert tools.trained[:2] == [runs / "mfpo@seed0@difficulty0", runs / "mfpo@seed0@difficulty1"]
    assert stand_in_config(runs / "mfpo@seed0@difficulty0")["resume_from_checkpoint"] == str(checkpoint)

    # the rows of the first stage change (what `ue-dpo data` records of them): it and both stages after it retrain,
    # although their own configs are what they were
    stock = runner.training_data
    monkeypatch.setattr(
        runner,
        "training_data",
        lambda config: {**stock(config), "converted": config.get("ue_difficulty") == 2},
    )
    tools = StandIns(monkeypatch)
    runner.ExperimentRunner(staged_experiment(staged_dir, out)).run()
    assert tools.trained == [runs / f"mfpo@seed{seed}@difficulty{level}" for seed in (0, 1) for level in (2, 0, 1)] + [
        runs / "after@seed0",
        runs / "after@seed1",
    ]


def test_a_swept_staged_run_trains_its_stages_in_each_cell_and_resumes_there(staged_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    experiment = staged_experiment(staged_dir, out, levels=(0, 1), sweep={"runs.mfpo.pref_beta": [0.1, 0.2]})
    tools = StandIns(monkeypatch, interrupt_at="pref_beta=0.2/runs/mfpo@seed1@difficulty1")
    with pytest.raises(RunInterrupted):
        sweep.run_sweep(experiment)
    tools = StandIns(monkeypatch)
    sweep.run_sweep(experiment)
    second = out / "cells" / "pref_beta=0.2" / "runs"
    assert tools.trained == [second / "mfpo@seed1@difficulty1", second / "after@seed0", second / "after@seed1"]
    stages = [stand_in_config(second / f"mfpo@seed1@difficulty{level}") for level in (0, 1)]
    assert [(stage["pref_beta"], stage["ue_difficulty"]) for stage in stages] == [(0.2, 0), (0.2, 1)]
    assert stages[1]["adapter_name_or_path"] == str(second / "mfpo@seed1@difficulty0")
    assert tools.model_args["mfpo@seed1"]["pretrained"] == str(second / "mfpo@seed1@difficulty1")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"stages": {"by": "difficulty", "levels": []}}, r"runs.mfpo.stages.levels: list the `difficulty` levels"),
        ({"stages": {"by": "difficulty", "levels": [0, 0]}}, r"distinct integers >= 0, at least one"),
        ({"stages": {"by": "difficulty", "levels": [1, -1]}}, r"got \[1, -1\]"),
        ({"stages": {"by": "entropy", "levels": [0]}}, r"runs.mfpo.stages.by: 'entropy' is not what a run can be"),
        ({"stages": {"levels": [0]}}, r"runs.mfpo.stages: .*`by`"),
        ({"stages": {"by": "difficulty", "levels": [0], "order": "up"}}, r"runs.mfpo.stages.*order"),
        (
            {"train": "dpo.yaml"},
            r"runs.mfpo.stages: the run trains with `stage: dpo` \(dpo.yaml\), which does not "
            r"read `ue_difficulty`",
        ),
        ({"overrides": {"ue_difficulty": 1}}, r"runs.mfpo.stages: `ue_difficulty` is set per stage by `stages:`"),
        ({"overrides": {"finetuning_type": "oft"}}, r"not `finetuning_type: oft`; use lora, full or freeze"),
        (
            {"overrides": {"finetuning_type": "full", "adapter_name_or_path": "a"}},
            r"`adapter_name_or_path` with `finetuning_type: full`",
        ),
    ],
)
def test_stages_are_refused_with_the_key_named(staged_dir, tmp_path, change, message):
    with pytest.raises(ExperimentConfigError, match=message):
        staged_experiment(staged_dir, tmp_path / "out", **change)


def test_a_checkpoint_run_has_no_stages(staged_dir, tmp_path):
    raw = {**VALID, "runs": [{"name": "base", "checkpoint": "m", "stages": {"by": "difficulty", "levels": [0]}}]}
    with pytest.raises(ExperimentConfigError, match=r"runs.base.stages: a `checkpoint:` run is evaluated as it is"):
        parse_experiment(raw, base_dir=staged_dir)


def test_llamafactory_trains_a_level_continuing_the_previous_stage_adapter(tiny_llava_dir, levelled, tmp_path):
    """The one real training here: a later stage's config as `ue-dpo run` writes it, through `llamafactory-cli train`,
    at learning rate 0, which saves the adapter it started from: the previous stage's (made here with peft, lora_B
    not zero), not a new one (whose lora_B would be zeros); and its level's rows only, logged."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import LlavaForConditionalGeneration

    previous_dir = tmp_path / "levels@difficulty0"
    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(previous_dir)
    stage_dir = tmp_path / "levels@difficulty2"
    config = tiny_training_config("llava", tiny_llava_dir, levelled, tmp_path / "unused", dataset="levels")
    config.update(ue_weighting="uniform", learning_rate=0.0, max_steps=1)
    result = run_train(runner.staged_config(config, 2, str(stage_dir), str(previous_dir)), tmp_path / "run")
    assert result.returncode == 0, result.stderr[-4000:]
    assert (
        "ue_difficulty: 2: kept 3 of the 8 rows of dataset `levels` (column `level`)" in result.stdout + result.stderr
    )
    previous, continued = (load_file(folder / "adapter_model.safetensors") for folder in (previous_dir, stage_dir))
    assert previous.keys() == continued.keys()
    lora_b = [name for name in previous if "lora_B" in name]
    assert lora_b and all(previous[name].abs().max() > 0 for name in lora_b)
    assert all(torch.equal(previous[name], continued[name]) for name in previous)
