"""`sweep:` in experiment files: its parsing and refusals, the cells, which stages they share, resumption, and the
sweep's report. The trainings and evaluations are stand-ins here (as in test_experiment.py); the real
`ue-dpo run` of a sweep is in test_demo.py."""

import json
import re
from pathlib import Path

import pytest
import yaml
from lmms_eval.utils import simple_parse_args_string
from scipy import stats

from test_experiment import LMMS_EVAL_RESULTS, VALID, write_lmms_eval_output
from ue_dpo.evaluation.model import _system_prompt
from ue_dpo.experiment import runner, sweep
from ue_dpo.experiment.config import ExperimentConfigError, parse_experiment
from ue_dpo.experiment.layout import ExperimentLayout
from ue_dpo.experiment.stages import RunInterrupted

SYSTEM_PROMPT = 'You\'re a careful, brief assistant: name what you see, e.g. "a red {circle}".'


@pytest.fixture
def base_dir(tmp_path):
    (tmp_path / "dpo.yaml").write_text(yaml.safe_dump({"stage": "dpo", "do_train": True, "seed": 3}))
    ue_config = {
        "stage": "ue_dpo",
        "do_train": True,
        "template": "qwen2_vl",
        "default_system": SYSTEM_PROMPT,
        "image_max_pixels": 200704,
        "ue_alpha": 0.3,
    }
    (tmp_path / "ue.yaml").write_text(yaml.safe_dump(ue_config))
    (tmp_path / "tpo.yaml").write_text(yaml.safe_dump({"stage": "ue_dpo", "do_train": True, "ue_weighting": "tpo"}))
    return tmp_path


UE_RUN = {"name": "ue", "train": "ue.yaml", "overrides": {"model_name_or_path": "${runs.dpo}"}}
SWEPT = {
    **VALID,
    "runs": [*VALID["runs"], UE_RUN],
    "sweep": {
        "synthetic.preference_pairs": [64, 256],
        "runs.ue.ue_alpha": [0.1, 0.3],
        "evaluation.gen_kwargs.max_new_tokens": [16],
    },
}


def test_the_cells_are_the_product_of_the_values_in_file_order_each_the_file_with_its_values(base_dir):
    experiment = parse_experiment(SWEPT, base_dir=base_dir)
    assert [(axis.key, axis.name, axis.values) for axis in experiment.sweep] == [
        ("synthetic.preference_pairs", "preference_pairs", (64, 256)),
        ("runs.ue.ue_alpha", "ue_alpha", (0.1, 0.3)),
        ("evaluation.gen_kwargs.max_new_tokens", "max_new_tokens", (16,)),
    ]
    assert [cell.name for cell in experiment.cells] == [
        "preference_pairs=64+ue_alpha=0.1+max_new_tokens=16",
        "preference_pairs=64+ue_alpha=0.3+max_new_tokens=16",
        "preference_pairs=256+ue_alpha=0.1+max_new_tokens=16",
        "preference_pairs=256+ue_alpha=0.3+max_new_tokens=16",
    ]
    cell = experiment.cells[2].experiment
    assert cell.synthetic.preference_pairs == 256 and cell.synthetic.eval_images == 4
    assert cell.run("ue").overrides == {"model_name_or_path": "${runs.dpo}", "ue_alpha": 0.1}
    assert cell.run("dpo").overrides == {"model_name_or_path": "${runs.base}", "max_steps": 2}
    assert [protocol.gen_kwargs for protocol in cell.evaluation.protocols] == [{"max_new_tokens": 16}]
    assert "sweep" not in cell.raw and experiment.raw["sweep"] == SWEPT["sweep"]
    assert parse_experiment(VALID, base_dir=base_dir).cells == ()
    # two keys with the same last part are named by as much of their key as tells them apart
    both = {**SWEPT, "runs": [*SWEPT["runs"], {**UE_RUN, "name": "ue2"}]}
    both["sweep"] = {"runs.ue.ue_alpha": [0.1], "runs.ue2.ue_alpha": [0.2]}
    assert [cell.name for cell in parse_experiment(both, base_dir=base_dir).cells] == [
        "ue.ue_alpha=0.1+ue2.ue_alpha=0.2"
    ]


def swept(sweep_block, **more):
    return {**SWEPT, "sweep": sweep_block, **more}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (swept({}), r"sweep: map each swept key to its list of values"),
        (swept([1, 2]), r"sweep: map each swept key to its list of values"),
        (swept({"seeds": [[0], [1]]}), r"sweep.seeds: not a key a sweep can vary; sweep `synthetic.FIELD`"),
        (swept({"synthetic.contrast": [1, 2]}), r"sweep.synthetic.contrast: 'contrast' is not a synthetic world param"),
        (
            swept(
                {"synthetic.eval_images": [4, 8]},
                synthetic=None,
                runs=[{"name": "dpo", "train": "dpo.yaml"}],
                evaluation={"tasks": ["shapes_caption"]},
            ),
            r"sweep.synthetic.eval_images: the file has no `synthetic:` block to vary; add one",
        ),
        (
            swept({"runs.ppo.ue_alpha": [0.1]}),
            r"sweep.runs.ppo.ue_alpha: write runs.RUN.KEY with RUN one of the runs \['base', 'dpo', 'ue'\]",
        ),
        (swept({"runs.base.max_steps": [1]}), r"sweep.runs.base.max_steps: run 'base' is a `checkpoint:` run"),
        (swept({"runs.ue.ue_alpha": []}), r"sweep.runs.ue.ue_alpha: list the values to sweep, e.g. "),
        (swept({"runs.ue.ue_alpha": 0.1}), r"sweep.runs.ue.ue_alpha: list the values to sweep, .* got 0.1"),
        (swept({"runs.ue.ue_alpha": [0.1, 0.3, 0.1]}), r"sweep.runs.ue.ue_alpha: 0.1 is listed twice; list each"),
        (swept({"runs.dpo.max_steps": [2, 2.0]}), r"sweep.runs.dpo.max_steps: 2.0 is listed twice"),
        (swept({"runs.ue.ue_alpha": [[0.1]]}), r"sweep.runs.ue.ue_alpha: \[0.1\] is not one value; each value is a"),
        (swept({"runs.dpo.dataset": ["a/b"]}), r"sweep.runs.dpo.dataset: 'a/b' cannot name a cell folder"),
        (
            swept({"runs.dpo.ue_alpha": [0.1]}),
            r"sweep: in cell ue_alpha=0.1: sweep.runs.dpo.ue_alpha: run 'dpo' trains with `stage: dpo` \(dpo.yaml\), "
            r"which does not read ue_alpha \(a key of `stage: ue_dpo`\); sweep it on a run with `stage: ue_dpo`",
        ),
        (
            {**swept({"runs.tpo.ue_tau": [0.5]}), "runs": [*SWEPT["runs"], {"name": "tpo", "train": "tpo.yaml"}]},
            r"sweep.runs.tpo.ue_tau: run 'tpo' trains with `ue_weighting: tpo`, which does not read ue_tau \(read by "
            r"ue, mdpo_ue; set by the sweep\); sweep a key that tpo reads, or drop ue_tau",
        ),
        (
            swept({"runs.ue.ue_weighting": ["ue", "tpo"]}),
            r"sweep: in cell ue_weighting=tpo: sweep: runs.ue: run 'ue' trains with `ue_weighting: tpo`, which does "
            r"not read ue_alpha \(read by ue, mdpo_ue; set by ue.yaml or its overrides\)",
        ),
        (swept({"runs.ue.ue_alpah": [0.1]}), r"sweep.runs.ue.ue_alpah: 'ue_alpah' is not a key of `stage: ue_dpo`"),
        (
            swept({"runs.ue.model_name_or_path": ["m"]}),
            r"sweep.runs.ue.model_name_or_path: runs.ue.overrides.model_name_or_path is '\$\{runs.dpo\}', a reference "
            r"the sweep would replace",
        ),
        (
            swept({"evaluation.env.UE_DPO_SHAPES_EVAL_DIR": ["x"]}),
            r"sweep.evaluation.env.UE_DPO_SHAPES_EVAL_DIR: .* is '\$\{synthetic.eval\}', a reference the sweep would",
        ),
        (
            swept({"evaluation.tasks": ["amber"]}),
            r"sweep.evaluation.tasks: 'tasks' is not an evaluation setting a sweep can vary; use one of \['batch_size'",
        ),
        (
            swept({"evaluation.seed.python": [1]}, evaluation={**VALID["evaluation"], "seed": [0, 1, 2, 3]}),
            r"sweep.evaluation.seed.python: evaluation.seed is not a mapping, so it has no key 'python'",
        ),
        (swept({"runs.dpo.output_dir": ["x"]}), r"sweep: in cell output_dir=x: runs.dpo.overrides.output_dir: set by"),
        (
            swept({"synthetic.eval_images": [4, 0]}),
            r"sweep: in cell eval_images=0: synthetic.eval_images: must be an integer >= 1, got 0",
        ),
        (
            swept({"synthetic.faint_grey": [222, 160]}),
            r"sweep: in cell faint_grey=222: synthetic.faint_grey: only `world: blind_spots` draws faint shapes",
        ),
        (
            swept({"evaluation.gen_kwargs.max_new_token": [8]}),
            r"in cell max_new_token=8: evaluation.gen_kwargs.max_new_token: lmms-eval model ue_dpo_hf does not read",
        ),
    ],
)
def test_a_malformed_sweep_is_refused_naming_the_key_and_the_fix(base_dir, raw, message):
    with pytest.raises(ExperimentConfigError, match=message):
        parse_experiment(raw, base_dir=base_dir)


def test_the_method_of_a_swept_ue_weighting_reads_the_other_swept_keys_of_its_cell(base_dir):
    raw = swept({"runs.ue.ue_weighting": ["ue", "mdpo_ue"], "runs.ue.ue_tau": [0.5, 1.0]})
    assert len(parse_experiment(raw, base_dir=base_dir).cells) == 4
    with pytest.raises(ExperimentConfigError, match=r"in cell ue_weighting=tpo\+ue_tau=0.5: .* does not read ue_tau"):
        parse_experiment(swept({"runs.ue.ue_weighting": ["ue", "tpo"], "runs.ue.ue_tau": [0.5]}), base_dir=base_dir)


class StandIns:
    """llamafactory-cli, lmms-eval and the world's builder, done at once: each training writes its config beside its
    trainer_state.json, each evaluation a chair_s computed from the evaluated model's config."""

    def __init__(self, monkeypatch, interrupt_at: str | None = None):
        self.trained, self.evaluated, self.built = [], [], []
        self.model_args = {}  # evaluated model (its evals folder's name) -> its lmms-eval model_args
        self.interrupt_at = interrupt_at  # a training (its output_dir's name and folder) that is interrupted
        monkeypatch.setattr(runner, "stream", self.stream)
        monkeypatch.setattr(runner, "build_synthetic_world", self.build)

    def build(self, world, root):
        self.built.append((world.preference_pairs, root))
        for name in ("model", "data", "eval"):
            (root / name).mkdir(parents=True)
        (root / "model" / "config.json").write_text(json.dumps({"pairs": world.preference_pairs}))

    def stream(self, command, *, env, log_path, cwd=None):
        if command[1] == "train":
            config = yaml.safe_load(Path(command[2]).read_text())
            output_dir = Path(config["output_dir"])
            if self.interrupt_at is not None and str(output_dir).endswith(self.interrupt_at):
                raise RunInterrupted(2, command, log_path)
            self.trained.append(output_dir)
            output_dir.mkdir(parents=True, exist_ok=True)  # a resumed training's holds its checkpoints
            (output_dir / "trainer_state.json").write_text("{}")
            (output_dir / "stand_in.json").write_text(json.dumps(config))
            return 0
        for entry in yaml.safe_load(Path(command[-1]).read_text()):
            model_args = simple_parse_args_string(entry["model_args"])  # as lmms-eval reads them
            model = Path(model_args["pretrained"])
            self.evaluated.append(Path(entry["output_path"]).parent)
            self.model_args[Path(entry["output_path"]).parent.name] = model_args
            results = json.loads(json.dumps(LMMS_EVAL_RESULTS))
            results["results"]["shapes_caption"]["chair_s,none"] = chair_s(model)
            write_lmms_eval_output(Path(entry["output_path"]), results=results, tasks_with_samples=["shapes_caption"])
        return 0


def chair_s(model: Path) -> float:
    """A number per trained model that differs by run, seed, ue_alpha and the world's pairs."""
    if not (model / "stand_in.json").is_file():
        return 50.0 + json.loads((model / "config.json").read_text())["pairs"] / 64
    config = json.loads((model / "stand_in.json").read_text())
    pairs = json.loads((Path(config["dataset_dir"]).parent / "model" / "config.json").read_text())["pairs"]
    seed = config.get("seed", 0)
    return 20 + pairs / 64 + seed * seed * 3 + (100 * config["ue_alpha"] if "ue_alpha" in config else 0)


def study(base_dir, out: Path):
    """Pairs swept in the world, ue_alpha in one run, two seeds, DPO the baseline."""
    runs = [
        {"name": "base", "checkpoint": "${synthetic.model}"},
        {
            "name": "dpo",
            "train": "dpo.yaml",
            "overrides": {"model_name_or_path": "${synthetic.model}", "dataset_dir": "${synthetic.data}"},
        },
        {
            "name": "ue",
            "train": "ue.yaml",
            "overrides": {"model_name_or_path": "${synthetic.model}", "dataset_dir": "${synthetic.data}"},
        },
    ]
    raw = {
        **VALID,
        "output": str(out),
        "seeds": [0, 1],
        "baseline": "dpo",
        "reported": [],
        "evaluation": {**VALID["evaluation"], "metrics": {"shapes_caption": ["chair_s"]}},
        "runs": runs,
        "sweep": {"synthetic.preference_pairs": [64, 128], "runs.ue.ue_alpha": [0.1, 0.2]},
    }
    return parse_experiment(raw, base_dir=base_dir)


def test_cells_share_the_stages_that_read_the_same_values_and_each_is_compared_with_its_own_baseline(
    base_dir, tmp_path, monkeypatch
):
    tools = StandIns(monkeypatch)
    out = tmp_path / "out"
    experiment = study(base_dir, out)
    sweep.run_sweep(experiment)

    shared, cells = out / "shared", out / "cells"
    # the world and DPO read the pairs only: one per value; UE-DPO reads both keys: one per cell
    assert [pairs for pairs, _ in tools.built] == [64, 128]
    assert [root for _, root in tools.built] == [
        shared / "preference_pairs=64" / "synthetic",
        shared / "preference_pairs=128" / "synthetic",
    ]
    assert tools.trained == [
        shared / "preference_pairs=64" / "runs" / "dpo@seed0",
        shared / "preference_pairs=64" / "runs" / "dpo@seed1",
        cells / "preference_pairs=64+ue_alpha=0.1" / "runs" / "ue@seed0",
        cells / "preference_pairs=64+ue_alpha=0.1" / "runs" / "ue@seed1",
        cells / "preference_pairs=64+ue_alpha=0.2" / "runs" / "ue@seed0",
        cells / "preference_pairs=64+ue_alpha=0.2" / "runs" / "ue@seed1",
        shared / "preference_pairs=128" / "runs" / "dpo@seed0",
        shared / "preference_pairs=128" / "runs" / "dpo@seed1",
        cells / "preference_pairs=128+ue_alpha=0.1" / "runs" / "ue@seed0",
        cells / "preference_pairs=128+ue_alpha=0.1" / "runs" / "ue@seed1",
        cells / "preference_pairs=128+ue_alpha=0.2" / "runs" / "ue@seed0",
        cells / "preference_pairs=128+ue_alpha=0.2" / "runs" / "ue@seed1",
    ]
    # a trained run is prompted with its training template and image sizes (ue.yaml's), a checkpoint or a config
    # without them by its model family's template, which ue_dpo_hf reads from the model, and LLaMA-Factory's defaults
    assert tools.model_args["ue@seed0"]["template"] == "qwen2_vl"
    assert tools.model_args["ue@seed0"]["image_max_pixels"] == 200704
    # the system prompt's commas, quotes and braces pass lmms-eval's model-args parser, which ue_dpo_hf decodes
    assert _system_prompt(tools.model_args["ue@seed0"]["default_system"]) == SYSTEM_PROMPT
    for name in ("dpo@seed0", "base"):
        assert not {"template", "default_system", "image_max_pixels"} & set(tools.model_args[name])
    trained_ue = json.loads((tools.trained[4] / "stand_in.json").read_text())
    assert (trained_ue["ue_alpha"], trained_ue["dataset_dir"]) == (
        0.2,
        str(shared / "preference_pairs=64" / "synthetic" / "data"),
    )
    assert [path.relative_to(out) for path in tools.evaluated] == [
        Path(folder)
        for folder in (
            "shared/preference_pairs=64/evals/base",
            "shared/preference_pairs=64/evals/dpo@seed0",
            "shared/preference_pairs=64/evals/dpo@seed1",
            "cells/preference_pairs=64+ue_alpha=0.1/evals/ue@seed0",
            "cells/preference_pairs=64+ue_alpha=0.1/evals/ue@seed1",
            "cells/preference_pairs=64+ue_alpha=0.2/evals/ue@seed0",
            "cells/preference_pairs=64+ue_alpha=0.2/evals/ue@seed1",
            "shared/preference_pairs=128/evals/base",
            "shared/preference_pairs=128/evals/dpo@seed0",
            "shared/preference_pairs=128/evals/dpo@seed1",
            "cells/preference_pairs=128+ue_alpha=0.1/evals/ue@seed0",
            "cells/preference_pairs=128+ue_alpha=0.1/evals/ue@seed1",
            "cells/preference_pairs=128+ue_alpha=0.2/evals/ue@seed0",
            "cells/preference_pairs=128+ue_alpha=0.2/evals/ue@seed1",
        )
    ]
    assert sorted(path.name for path in (shared / "preference_pairs=64" / "state").iterdir()) == [
        "eval-base.done.json",
        "eval-dpo@seed0.done.json",
        "eval-dpo@seed1.done.json",
        "synthetic.done.json",
        "train-dpo@seed0.done.json",
        "train-dpo@seed0.started.json",
        "train-dpo@seed1.done.json",
        "train-dpo@seed1.started.json",
    ]

    # Δ of UE-DPO vs DPO in cell pairs=128, ue_alpha=0.2, from the models' numbers: per seed s,
    # (20 + 2 + 3s² + 20) − (20 + 2 + 3s²) = 20 whatever the seed, so a zero-width interval; the checkpoint's
    # 50 + 2 against DPO's 22 and 25: differences 30 and 27
    table = (out / "sweep.md").read_text()
    assert "| 128 | 0.2 | ue | 43.50 [" in table and "| +20.00 [+20.00, +20.00] |" in table
    differences = [52.0 - 22.0, 52.0 - 25.0]
    mean = sum(differences) / 2
    half = stats.t.ppf(0.975, 1) * stats.tstd(differences) / 2**0.5
    assert f"| 128 | 0.2 | base | 52.00 | {mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}] |" in table
    assert "| 128 | 0.2 | dpo | 23.50 [" in table and "| (baseline) |" in table
    result = json.loads((out / "sweep.json").read_text())
    assert [cell["finished"] for cell in result["cells"]] == [True] * 4
    delta = result["cells"][3]["comparison"]["runs"]["base"]["tasks"]["shapes_caption"]["chair_s"]
    assert (delta["delta"], delta["low"], delta["high"]) == pytest.approx((mean, mean - half, mean + half))
    assert (out / "sweep_shapes_caption_chair_s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (
        ExperimentLayout(out).sweep_chart("shapes_caption", "recall,exact").name
        == "sweep_shapes_caption_recall_exact.png"
    )
    assert (cells / "preference_pairs=128+ue_alpha=0.2" / "results.md").is_file()

    tools.trained.clear(), tools.evaluated.clear(), tools.built.clear()
    sweep.run_sweep(experiment)  # finished: nothing is done again
    assert (tools.trained, tools.evaluated, tools.built) == ([], [], [])


def test_an_interrupted_sweep_reports_its_finished_cells_and_resumes_after_them(base_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    experiment = study(base_dir, out)
    tools = StandIns(monkeypatch, interrupt_at="ue_alpha=0.2/runs/ue@seed0")
    with pytest.raises(RunInterrupted):
        sweep.run_sweep(experiment)
    result = json.loads((out / "sweep.json").read_text())
    assert [cell["finished"] for cell in result["cells"]] == [True, False, False, False]
    table = (out / "sweep.md").read_text()
    assert "4 cells, 1 finished; missing: preference_pairs=64+ue_alpha=0.2, preference_pairs=128+ue_alpha=0.1" in table
    assert "| 64 | 0.2 | missing | – | – |" in table and "| 64 | 0.1 | ue | " in table

    tools = StandIns(monkeypatch)
    sweep.run_sweep(experiment)
    assert [path.relative_to(out).as_posix() for path in tools.trained][:2] == [
        "cells/preference_pairs=64+ue_alpha=0.2/runs/ue@seed0",
        "cells/preference_pairs=64+ue_alpha=0.2/runs/ue@seed1",
    ]
    assert not any("ue_alpha=0.1" in str(path) and "=64" in str(path) for path in tools.trained + tools.evaluated)
    assert [pairs for pairs, _ in tools.built] == [128]
    assert [cell["finished"] for cell in json.loads((out / "sweep.json").read_text())["cells"]] == [True] * 4

    # another value in the file: the cells it changes are missing from the report until they are run again
    raw = {**experiment.raw, "sweep": {**experiment.raw["sweep"], "runs.ue.ue_alpha": [0.1, 0.3]}}
    sweep.write_sweep_report(parse_experiment(raw, base_dir=base_dir))
    assert [cell["finished"] for cell in json.loads((out / "sweep.json").read_text())["cells"]] == [
        True,
        False,
        True,
        False,
    ]


def test_two_cells_that_would_share_a_stage_with_different_configs_stop_the_run(base_dir, tmp_path, monkeypatch):
    StandIns(monkeypatch)
    experiment = study(base_dir, tmp_path / "out")
    reads = sweep.stage_reads(experiment.cells[0].experiment, [axis.key for axis in experiment.sweep])
    assert reads["runs.dpo"] == {"synthetic.preference_pairs"} and reads["evals.base"] == {"synthetic.preference_pairs"}
    monkeypatch.setattr(sweep, "stage_reads", lambda *_: {**reads, "runs.ue": frozenset()})  # a wrong analysis
    with pytest.raises(runner.StageError, match=re.escape("stage train-ue@seed0 in ") + r".* is shared by cells that"):
        sweep.run_sweep(experiment)


def test_the_docs_sweep_example_gives_the_cells_it_describes(base_dir):
    page = (Path(__file__).resolve().parents[1] / "docs" / "experiments.md").read_text()
    section = page[page.index("## Sweeps") :]
    example = yaml.safe_load(section[section.index("```yaml") + len("```yaml") : section.index("```\n", 10)])
    runs = [*VALID["runs"], {**UE_RUN, "name": "ue_dpo"}]
    experiment = parse_experiment({**VALID, **example, "runs": runs}, base_dir=base_dir)
    assert len(experiment.cells) == 8 and experiment.baseline == "dpo"
    assert experiment.cells[0].name == "preference_pairs=64+ue_alpha=0.1+max_new_tokens=16"
    assert experiment.cells[0].experiment.raw["seeds"] == [0, 1, 2, 3, 4]


def test_without_a_baseline_the_sweep_shows_the_means_and_marks_the_missing_cells(base_dir, tmp_path):
    raw = {**study(base_dir, tmp_path / "out").raw, "baseline": None}
    experiment = parse_experiment(raw, base_dir=base_dir)
    runs = [
        {"name": name, "label": name, "seeds": [0, 1], "metrics": {"shapes_caption": {"chair_s": value}}}
        for name, value in (("base", 50.0), ("dpo", 22.0), ("ue", 31.0))
    ]
    runs[2]["intervals"] = {"shapes_caption": {"chair_s": [29.0, 33.0]}}
    cells = [
        {"name": cell.name, "values": cell.values, "finished": index != 1, "runs": runs, "comparison": None}
        for index, cell in enumerate(experiment.cells)
    ]
    result = {"columns": [["shapes_caption", "chair_s"]], "higher_is_better": {"shapes_caption": {}}, "cells": cells}
    table = sweep.render_sweep_markdown(experiment, result)
    assert "| preference_pairs | ue_alpha | run | shapes_caption chair_s |" in table
    assert "| 64 | 0.1 | ue | 31.00 [29.00, 33.00] |" in table and "| 64 | 0.2 | missing | – |" in table
    assert "Δ" not in table and "missing: preference_pairs=64+ue_alpha=0.2 (run `ue-dpo run` again" in table
    sweep.render_sweep_chart(experiment, result, "shapes_caption", "chair_s", tmp_path / "chart.png")
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_blind_spot_worlds_visibility_is_swept_one_world_per_level(base_dir):
    raw = swept({"synthetic.faint_grey": [222, 160, 96]})
    raw["synthetic"] = {**raw["synthetic"], "world": "blind_spots"}
    experiment = parse_experiment(raw, base_dir=base_dir)
    assert [cell.experiment.synthetic.faint_grey for cell in experiment.cells] == [222, 160, 96]
    assert experiment.cells[1].name == "faint_grey=160"
    reads = sweep.stage_reads(experiment.cells[0].experiment, ["synthetic.faint_grey"])
    assert set(reads.values()) == {frozenset({"synthetic.faint_grey"})}  # every stage reads the world: none shared
