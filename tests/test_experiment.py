"""The experiment file of `ue-dpo run` (schema, `--set`, references), the check of lmms-eval's output files, and
the report. The runner end to end, resumption included, is `make demo` in test_demo.py."""

import copy
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ue_dpo.cli import main
from ue_dpo.experiment import embedded_default_path, runner
from ue_dpo.experiment.config import ExperimentConfigError, Protocol, apply_setting, load_experiment, parse_experiment
from ue_dpo.experiment.outputs import read_lmms_eval_output
from ue_dpo.experiment.report import REPORTED_MARK, render_chart, render_markdown, table_columns
from ue_dpo.experiment.runner import last_checkpoint, logged_world_size
from ue_dpo.experiment.stages import StageError
from ue_dpo.machine import describe_machine, summarize_machine


@pytest.fixture
def base_dir(tmp_path):
    (tmp_path / "dpo.yaml").write_text(yaml.safe_dump({"stage": "dpo", "do_train": True, "seed": 3}))
    (tmp_path / "no_train.yaml").write_text(yaml.safe_dump({"stage": "dpo"}))
    return tmp_path


VALID = {
    "output": "results/x",
    "synthetic": {"arch": "llava", "eval_images": 4},
    "runs": [
        {"name": "base", "checkpoint": "${synthetic.model}"},
        {"name": "dpo", "train": "dpo.yaml", "overrides": {"model_name_or_path": "${runs.base}", "max_steps": 2}},
    ],
    "evaluation": {"tasks": ["shapes_caption"], "env": {"UE_DPO_SHAPES_EVAL_DIR": "${synthetic.eval}"}},
    "reported": [{"label": "paper", "source": "Table 1", "metrics": {"shapes_caption": {"chair_s": 5}}}],
}


def changed(path: str, value, *more) -> dict:
    """VALID with `path` set to `value`, then each further (path, value) pair."""
    raw = copy.deepcopy(VALID)
    for key, item in ((path, value), *more):
        apply_setting(raw, f"{key}={json.dumps(item)}")
    return raw


UE_RUN = {"name": "ue", "train": "dpo.yaml", "overrides": {"model_name_or_path": "${runs.dpo}"}}


def test_a_valid_file_parses_with_its_defaults(base_dir):
    experiment = parse_experiment(VALID, base_dir=base_dir)
    assert [run.name for run in experiment.runs] == ["base", "dpo"]
    assert experiment.run("dpo").train == base_dir / "dpo.yaml" and experiment.run("dpo").label == "dpo"
    assert experiment.run("base").checkpoint == "${synthetic.model}"
    assert experiment.evaluation.model == "ue_dpo_hf" and experiment.evaluation.seed == (0, 1234, 1234, 1234)
    assert experiment.synthetic.arch == "llava" and experiment.synthetic.eval_images == 4
    assert experiment.synthetic.sft_examples == 512
    assert experiment.reported[0].metrics == {"shapes_caption": {"chair_s": 5.0}}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({key: value for key, value in VALID.items() if key != "runs"}, "runs: list the runs"),
        ({key: value for key, value in VALID.items() if key != "output"}, "`output` is missing"),
        ({**VALID, "outputs": "x"}, r"unknown key\(s\) \['outputs'\]"),
        (changed("runs.dpo.checkpoint", "m"), "runs.dpo: give exactly one of `train:"),
        (changed("runs.dpo.name", "base"), "'base' is used twice"),
        (changed("runs.dpo.name", "a b"), "must be letters, digits"),
        (changed("runs.dpo.train", "missing.yaml"), "missing.yaml does not exist .*relative to the experiment file"),
        (changed("runs.dpo.train", "no_train.yaml"), "does not set `do_train: true`"),
        (changed("runs.dpo.overrides.output_dir", "x"), "overrides.output_dir: set by `ue-dpo run`"),
        (changed("runs.base.checkpoint", "${runs.dpo}"), r"\$\{runs.dpo\} must name a run listed before it"),
        (changed("runs.dpo.overrides.dataset_dir", "${synthetic.images}"), r"\$\{synthetic.images\} is unknown"),
        (changed("runs.dpo.overrides.dataset_dir", "${home}"), r"\$\{home\} is unknown; use \$\{output\}"),
        ({**VALID, "synthetic": None}, r"\$\{synthetic.model\} needs a `synthetic:` block"),
        (changed("synthetic.arch", "gpt2"), "synthetic.arch: 'gpt2' is not a tiny model architecture"),
        (
            changed("synthetic.world", "ocean"),
            "synthetic.world: .ocean. is not a synthetic world; use one of shapes, blind_spots",
        ),
        (changed("synthetic.eval_images", 0), r"synthetic.eval_images: must be an integer >= 1"),
        (changed("synthetic.sft_noisy_share", 1.5), r"synthetic.sft_noisy_share: must be a number in \[0, 1\]"),
        (changed("evaluation.tasks", []), "evaluation.tasks: list the lmms-eval tasks"),
        (changed("evaluation.model_args.pretrained", "m"), "model_args.pretrained: set by `ue-dpo run`"),
        (changed("evaluation.model_args.template", "llava"), "model_args.template: set by `ue-dpo run`"),
        (changed("evaluation.model_args.image_max_pixels", 9), "model_args.image_max_pixels: set by `ue-dpo run`"),
        (changed("evaluation.gen_kwargs.until", "a,b"), "contains ',' or '='"),
        (changed("evaluation.batch_size", 0), "evaluation.batch_size: must be a positive integer"),
        (changed("evaluation.seed", [1, 2]), "evaluation.seed: one integer or four"),
        (changed("evaluation.model_args.device", "${runs.base}"), r"\$\{runs.base\} cannot be used here"),
        (changed("judge.api_key", "sk-1"), "judge.api_key: keys never go in experiment files"),
        (
            {**VALID, "reported": [{"label": "p", "source": "s", "metrics": {"t": {"m": "5%"}}}]},
            r"reported\[0\].metrics.t.m: must be a number",
        ),
        (
            changed("evaluation.tasks", [{"name": "amber", "num_beams": 3}]),
            r"evaluation.tasks\[0\]: unknown key\(s\) \['num_beams'\]; allowed: batch_size, gen_kwargs, limit, name",
        ),
        (changed("evaluation.tasks", [{"gen_kwargs": {}}]), r"evaluation.tasks\[0\]: `name` is missing"),
        (
            changed("evaluation.tasks", ["amber", {"name": "amber", "limit": 2}]),
            r"evaluation.tasks\[1\]: task 'amber' is listed twice",
        ),
        (
            changed("evaluation.tasks", [{"name": "amber", "limit": 0}]),
            r"evaluation.tasks.amber.limit: must be a positive integer \(items per task\) or null",
        ),
        (
            changed("evaluation.tasks", [{"name": "amber", "batch_size": "8"}]),
            "evaluation.tasks.amber.batch_size: must be a positive integer, got '8'",
        ),
        (
            changed("evaluation.tasks", [{"name": "amber", "gen_kwargs": {"until": "a,b"}}]),
            "evaluation.tasks.amber.gen_kwargs.until: 'a,b' contains ',' or '='",
        ),
        (
            changed("evaluation.tasks", [{"name": "amber", "gen_kwargs": [3]}]),
            "evaluation.tasks.amber.gen_kwargs: must be a mapping",
        ),
        # generation kwargs the model would refuse at its first request, or drop without a word, are refused here
        (
            changed("evaluation.tasks", [{"name": "amber", "gen_kwargs": {"max_new_token": 8}}]),
            r"evaluation.tasks.amber.gen_kwargs.max_new_token: lmms-eval model ue_dpo_hf does not read this generation "
            r"kwarg; it reads max_new_tokens, num_beams, do_sample, temperature, top_p, top_k, until",
        ),
        (
            changed("evaluation.gen_kwargs.beams", 3),
            r"evaluation.gen_kwargs.beams: lmms-eval model ue_dpo_hf does not read",
        ),
        (
            changed(
                "evaluation.server",
                {"command": "vllm serve {model} --port {port}"},
                ("evaluation.tasks", [{"name": "amber", "gen_kwargs": {"num_beams": 3}}]),
            ),
            r"evaluation.tasks.amber.gen_kwargs.num_beams: lmms-eval model openai \(a served run\) does not read this "
            r"generation kwarg; it reads max_new_tokens, temperature, top_p, seed, presence_penalty, frequency_penalty",
        ),
        # in-process model args kept in a served experiment would be ignored by lmms-eval's openai model
        (
            changed(
                "evaluation.server",
                {"command": "vllm serve {model} --port {port}"},
                ("evaluation.model_args", {"device": "cuda:0", "dtype": "bfloat16"}),
            ),
            r"evaluation.model_args: \['device', 'dtype'\] would be ignored: a served run is evaluated by lmms-eval's "
            r"`openai` model, which takes none of them \(the server loads the model: set the device and dtype in "
            r"evaluation.server.command, e.g. `vllm serve \{model\} --dtype bfloat16 --port \{port\}`\); remove them",
        ),
        (
            {**VALID, "reported": [{"label": "p", "source": "s", "metrics": {"mmhal_bench": {"score": 2.1}}}]},
            r"reported\[0\].judge: the row reports \['mmhal_bench'\], which an LLM judge scores; name the judge model",
        ),
        (
            {
                **VALID,
                "judge": {"model": "gpt-4o-2024-08-06"},
                "reported": [
                    {
                        "label": "p",
                        "source": "s",
                        "judge": "gpt-4-1106-preview",
                        "metrics": {"mmhal_bench": {"score": 2}},
                    }
                ],
            },
            r"reported\[0\].judge: 'p' was judged by gpt-4-1106-preview, but this experiment's judge.model is "
            r"gpt-4o-2024-08-06; ratings of different judges are not comparable",
        ),
        (
            {
                **VALID,
                "reported": [{"label": "p", "source": "s", "judge": "gpt-4-1106-preview", "metrics": {"a": {"b": 1}}}],
            },
            r"judged by gpt-4-1106-preview, but this experiment's judge.model is not set",
        ),
        (
            changed("seeds", "0-4"),
            r"seeds: list distinct non-negative integers, e.g. `seeds: \[0, 1, 2, 3, 4\]`, got '0-4'",
        ),
        (changed("seeds", [0, 0]), r"seeds: list distinct non-negative integers"),
        (changed("runs.dpo.seeds", [1, -1]), r"runs.dpo.seeds: list distinct non-negative integers"),
        (changed("runs.base.seeds", [0, 1]), r"runs.base.seeds: a `checkpoint:` run is not trained .* remove `seeds`"),
        (
            changed("seeds", [0, 1], ("runs.dpo.overrides.seed", 7)),
            r"runs.dpo.overrides.seed: set per seed by `seeds:` \(\[0, 1\]\); remove it, or give the run `seeds: null`",
        ),
        (
            changed("runs.dpo.seeds", [0], ("runs.dpo.overrides.ue_seed", 7)),
            r"runs.dpo.overrides.ue_seed: set per seed",
        ),
        (changed("baseline", "ppo"), r"baseline: 'ppo' names no run; .* one of \['base', 'dpo'\]"),
        (
            {**changed("runs.dpo.seeds", [0, 1]), "runs": [*changed("runs.dpo.seeds", [0, 1])["runs"], UE_RUN]},
            r"runs.ue: \$\{runs.dpo\} has one model per seed \(\[0, 1\]\) but ue is one model",
        ),
        (
            {**VALID, "seeds": [0, 1], "runs": [*VALID["runs"], {**UE_RUN, "seeds": [1, 2]}]},
            r"runs.ue.seeds: \$\{runs.dpo\} has no model of seed\(s\) \[2\] \(dpo is trained with seeds \[0, 1\]\)",
        ),
        (
            {
                **VALID,
                "seeds": [0, 1],
                "baseline": "dpo",
                "runs": [*VALID["runs"], {"name": "other", "train": "dpo.yaml", "seeds": [2, 3]}],
            },
            r"runs.other.seeds: \[2, 3\] shares no seed with the baseline 'dpo' \(\[0, 1\]\)",
        ),
    ],
)
def test_bad_experiment_files_are_refused_naming_the_key_and_the_fix(base_dir, raw, message):
    with pytest.raises(ExperimentConfigError, match=message):
        parse_experiment(raw, base_dir=base_dir)


def test_tasks_with_the_same_settings_share_one_protocol_and_task_settings_override_the_evaluations(base_dir):
    raw = changed(
        "evaluation",
        {
            "tasks": [
                {"name": "object_halbench", "gen_kwargs": {"num_beams": 3}},
                "amber",
                {"name": "mmhal_bench", "limit": None},
                {"name": "pope", "batch_size": 1},
            ],
            "gen_kwargs": {"max_new_tokens": 512},
            "limit": 8,
            "batch_size": 4,
        },
    )
    evaluation = parse_experiment(raw, base_dir=base_dir).evaluation
    assert evaluation.tasks == ("object_halbench", "amber", "mmhal_bench", "pope")
    assert evaluation.protocols == (
        Protocol(("object_halbench",), {"max_new_tokens": 512, "num_beams": 3}, 8, 4),
        Protocol(("amber",), {"max_new_tokens": 512}, 8, 4),
        Protocol(("mmhal_bench",), {"max_new_tokens": 512}, None, 4),
        Protocol(("pope",), {"max_new_tokens": 512}, 8, 1),
    )
    raw = changed("evaluation", {"tasks": ["a", {"name": "b", "limit": 3}, "c", {"name": "d", "limit": 3}]})
    assert [
        (protocol.name, protocol.limit) for protocol in parse_experiment(raw, base_dir=base_dir).evaluation.protocols
    ] == [("a+c", None), ("b+d", 3)]


def test_the_readme_protocol_example_gives_the_protocols_it_describes(base_dir):
    page = (Path(__file__).resolve().parents[1] / "docs" / "experiments.md").read_text()
    section = page[page.index("## The protocol, task by task") :]
    example = yaml.safe_load(
        section[section.index("```yaml") + len("```yaml") : section.index("```\n", section.index("```yaml") + 7)]
    )
    evaluation = parse_experiment({**VALID, **example}, base_dir=base_dir).evaluation
    assert evaluation.protocols == (
        Protocol(("object_halbench",), {"max_new_tokens": 1024, "num_beams": 3}, None, 8),
        Protocol(("amber",), {"max_new_tokens": 1024}, 500, 32),
        Protocol(("mmhal_bench",), {"max_new_tokens": 1024}, None, 8),
    )


def test_a_reported_row_judged_by_the_experiments_judge_is_kept(base_dir):
    raw = {
        **VALID,
        "judge": {"model": "gpt-4o-2024-08-06"},
        "reported": [
            {"label": "p", "source": "s", "judge": "gpt-4o-2024-08-06", "metrics": {"mmhal_bench": {"score": 2}}}
        ],
    }
    assert parse_experiment(raw, base_dir=base_dir).reported[0].judge == "gpt-4o-2024-08-06"


def test_a_task_named_like_a_folder_here_is_refused_before_lmms_eval_misreads_it(base_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shapes_caption").mkdir()
    experiment = parse_experiment({**VALID, "output": str(tmp_path / "out")}, base_dir=base_dir)
    experiment_runner = runner.ExperimentRunner(experiment)
    experiment_runner.paths.update({"runs.base": "model", "synthetic.eval": "eval"})
    with pytest.raises(
        StageError,
        match=r"\./shapes_caption is a folder, so lmms-eval would read `--tasks "
        r"shapes_caption` as a folder of task YAMLs",
    ):
        experiment_runner.lmms_eval_entries("base", experiment_runner.evaluation_settings())


def test_the_world_size_is_read_from_the_line_each_rank_logs():
    line = "2026-12-01 09:39:16 | INFO | lmms_eval.evaluator:evaluate:1047 - Running on rank {} (local rank {})\n"
    assert logged_world_size(line.format(1, 1) + line.format(0, 0) + line.format(0, 0)) == 2
    assert logged_world_size(line.format(0, 0)) == 1
    assert logged_world_size("no rank lines") is None


def test_set_addresses_runs_by_name_and_parses_values_as_yaml(base_dir, tmp_path):
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(VALID))
    experiment = load_experiment(
        path,
        ["runs.dpo.overrides.max_steps=7", "evaluation.limit=3", "evaluation.tasks=[a, b]"],
        output=tmp_path / "elsewhere",
    )
    assert experiment.run("dpo").overrides["max_steps"] == 7
    assert [(protocol.tasks, protocol.limit) for protocol in experiment.evaluation.protocols] == [(("a", "b"), 3)]
    assert experiment.output == tmp_path / "elsewhere" and experiment.raw["output"] == str(tmp_path / "elsewhere")
    with pytest.raises(ExperimentConfigError, match=r"runs has no entry named 'ppo'; names: \['base', 'dpo'\]"):
        load_experiment(path, ["runs.ppo.overrides.max_steps=7"])
    with pytest.raises(ExperimentConfigError, match="write KEY.PATH=VALUE"):
        load_experiment(path, ["evaluation.limit"])


def test_the_embedded_default_trains_dpo_and_ue_dpo_from_the_warm_up():
    experiment = load_experiment(embedded_default_path())
    assert [run.name for run in experiment.runs] == ["warmup", "dpo", "ue_dpo"]
    assert [yaml.safe_load(run.train.read_text())["stage"] for run in experiment.runs] == ["sft", "dpo", "ue_dpo"]
    assert experiment.run("dpo").overrides["model_name_or_path"] == "${runs.warmup}"
    assert experiment.run("ue_dpo").overrides["model_name_or_path"] == "${runs.warmup}"
    assert experiment.evaluation.tasks == ("shapes_caption",)
    dpo, ue_dpo = (yaml.safe_load(experiment.run(name).train.read_text()) for name in ("dpo", "ue_dpo"))
    assert {key: value for key, value in ue_dpo.items() if key not in ("stage", "ue_alpha")} == {
        key: value for key, value in dpo.items() if key != "stage"
    }


def write_lmms_eval_output(path: Path, *, results: dict, tasks_with_samples: list[str]) -> None:
    model_dir = path / "model__name"
    model_dir.mkdir(parents=True)
    (model_dir / "20260101_000000_results.json").write_text(json.dumps(results))
    for task in tasks_with_samples:
        (model_dir / f"20260101_000000_samples_{task}.jsonl").write_text("{}\n")


LMMS_EVAL_RESULTS = {
    "results": {
        "shapes_caption": {
            "alias": "shapes_caption",
            "chair_s,none": 25.0,
            "chair_s_stderr,none": "N/A",
            "chair_i,none": None,
            "recall,exact": 50.0,
        }
    },
    "n-samples": {"shapes_caption": {"original": 4, "effective": 4}},
    "higher_is_better": {"shapes_caption": {"chair_s": False}},
    "config": {"model": "ue_dpo_hf"},
}


def test_lmms_eval_output_is_read_and_checked(tmp_path):
    write_lmms_eval_output(tmp_path / "ok", results=LMMS_EVAL_RESULTS, tasks_with_samples=["shapes_caption"])
    summary = read_lmms_eval_output(tmp_path / "ok", ["shapes_caption"])
    assert summary["metrics"] == {"shapes_caption": {"chair_s": 25.0, "chair_i": None, "recall,exact": 50.0}}
    assert summary["samples_files"]["shapes_caption"].endswith("_samples_shapes_caption.jsonl")
    assert [record["lmms_eval_config"] for record in summary["evaluations"]] == [{"model": "ue_dpo_hf"}]
    with pytest.raises(StageError, match="found no \\*_results.json under "):
        read_lmms_eval_output(tmp_path / "nothing", ["shapes_caption"])
    with pytest.raises(StageError, match=r"no results for \['amber'\] under "):
        read_lmms_eval_output(tmp_path / "ok", ["shapes_caption", "amber"])
    write_lmms_eval_output(tmp_path / "unlogged", results=LMMS_EVAL_RESULTS, tasks_with_samples=[])
    with pytest.raises(StageError, match="task shapes_caption under .* was evaluated without --log_samples"):
        read_lmms_eval_output(tmp_path / "unlogged", ["shapes_caption"])


def test_the_last_checkpoint_is_the_highest_complete_one(tmp_path):
    assert last_checkpoint(tmp_path / "absent") is None
    for step, complete in ((5, True), (20, True), (30, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-20"


def test_reported_rows_are_marked_and_undefined_values_shown_as_such(base_dir, tmp_path):
    experiment = parse_experiment(VALID, base_dir=base_dir)
    results = {
        "evaluation": {"tasks": ["shapes_caption"]},
        "versions": {"ue-dpo": "0.1.0"},
        "machine": HERE,
        "runs": [
            {
                "name": label,
                "label": label,
                "model": label,
                "training": None,
                "metrics": {"shapes_caption": metrics},
                "higher_is_better": {"shapes_caption": {"chair_s": False}},
                "evaluation": {"world_size": 2, "machine": HERE},
            }
            for label, metrics in (("base", {"chair_s": 40.0, "chair_i": None}), ("dpo", {"chair_s": 12.5}))
        ],
        "reported": [
            {
                "label": "paper",
                "source": "Table 1",
                "judge": "judge-x",
                "measured": False,
                "metrics": {"shapes_caption": {"chair_s": 5.0}},
            }
        ],
    }
    columns = table_columns(experiment, results)
    assert columns == [("shapes_caption", "chair_s"), ("shapes_caption", "chair_i")]
    markdown = render_markdown(experiment, results, columns)
    assert "| run | shapes_caption chair_s ↓ | shapes_caption chair_i |" in markdown
    assert "| base | 40.00 | – |" in markdown and "| dpo | 12.50 | – |" in markdown
    assert f"| paper ({REPORTED_MARK}) | 5.00 | – |" in markdown
    assert f"- *paper*: {REPORTED_MARK}; copied from Table 1, judged by judge-x." in markdown
    assert (
        "Measured rows: lmms-eval `--model ue_dpo_hf` on shapes_caption with gen_kwargs of the task, limit none, "
        "batch size 1 (seed [0, 1234, 1234, 1234], world size 2)"
    ) in markdown
    assert f"Machine: {summarize_machine(HERE)}." in markdown
    render_chart(results, columns, tmp_path / "chart.png")
    assert (tmp_path / "chart.png").read_bytes()[:4] == b"\x89PNG"


HERE = {
    "cpu": {
        "model": "Intel(R) Xeon(R) Processor",
        "vendor": "GenuineIntel",
        "usable_cores": 2,
        "isa_flags": {"avx2": True, "avx512f": True},
    },
    "torch": {
        "version": "2.14.1",
        "blas": "mkl",
        "onednn": "v3.12.0",
        "cpu_capability": "AVX512",
        "intra_op_threads": 1,
        "inter_op_threads": 2,
    },
    "thread_env": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": None},
    "pins": {},
    "gpus": [],
}


def test_a_report_whose_stages_ran_on_other_machines_names_each_machine_and_its_stages(base_dir):
    experiment = parse_experiment(VALID, base_dir=base_dir)
    amd = copy.deepcopy(HERE)
    amd["cpu"].update(model="AMD EPYC 9B14 96-Core Processor", vendor="AuthenticAMD")
    results = {
        "evaluation": {"tasks": ["shapes_caption"]},
        "versions": {},
        "machine": HERE,
        "reported": [],
        "runs": [
            {
                "name": name,
                "label": name,
                "model": name,
                "training": {"machine": training},
                "metrics": {"shapes_caption": {"chair_s": 1.0}},
                "higher_is_better": {},
                "evaluation": {"world_size": 1, "machine": evaluation},
            }
            for name, training, evaluation in (("base", HERE, HERE), ("dpo", amd, HERE), ("old", None, None))
        ],
    }
    lines = render_markdown(experiment, results, table_columns(experiment, results)).splitlines()
    assert f"- {summarize_machine(HERE)}: train base, eval base, eval dpo" in lines
    assert f"- {summarize_machine(amd)}: train dpo" in lines
    assert "- not recorded: train old, eval old" in lines
    assert f"- this report written on: {summarize_machine(HERE)}" in lines
    assert not any(line.startswith("Machine: ") for line in lines)


def test_results_json_names_the_source_files_of_the_converted_training_data(base_dir, tmp_path, monkeypatch):
    from public_preference_files import write_rlhf_v
    from ue_dpo.datasets import Subset, convert

    source = write_rlhf_v(tmp_path / "source")
    data = tmp_path / "data"
    convert("rlhf_v", data, source=str(source))
    commands = []

    def finished_subprocess(command, *, env, log_path, cwd=None):  # llamafactory-cli train / lmms-eval, done
        commands.append(Path(command[0]).name)
        if command[1] == "train":
            output_dir = Path(yaml.safe_load(Path(command[2]).read_text())["output_dir"])
            output_dir.mkdir(parents=True)
            (output_dir / "trainer_state.json").write_text("{}")
        else:
            for entry in yaml.safe_load(Path(command[-1]).read_text()):
                write_lmms_eval_output(
                    Path(entry["output_path"]), results=LMMS_EVAL_RESULTS, tasks_with_samples=["shapes_caption"]
                )
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_path.write_text("INFO | lmms_eval.evaluator:evaluate:1047 - Running on rank 0 (local rank 0)\n")
        return 0

    monkeypatch.setattr(runner, "stream", finished_subprocess)
    experiment = parse_experiment(
        {
            "output": str(tmp_path / "out"),
            "evaluation": {"tasks": ["shapes_caption"]},
            "runs": [
                {"name": "dpo", "train": "dpo.yaml", "overrides": {"dataset": "rlhf_v", "dataset_dir": str(data)}}
            ],
        },
        base_dir=base_dir,
    )
    runner.run_experiment(experiment)

    run = json.loads((tmp_path / "out" / "results.json").read_text())["runs"][0]
    assert run["evaluation"]["world_size"] == 1
    assert run["evaluation"]["lmms_eval_entries"][0]["output_path"] == str(
        tmp_path / "out" / "evals" / "dpo" / "shapes_caption"
    )
    recorded = run["training"]["data"]
    parquet = source / "RLHF-V-Dataset.parquet"
    assert recorded["rlhf_v"]["files"] == {parquet.name: hashlib.sha256(parquet.read_bytes()).hexdigest()}
    assert (recorded["rlhf_v"]["hub"], recorded["rlhf_v"]["rows_read"], recorded["rlhf_v"]["subset"]) == (
        None,
        6,
        {"kind": "all"},
    )
    assert commands == ["llamafactory-cli", "lmms-eval"]
    assert run["training"]["machine"] == run["evaluation"]["machine"] == describe_machine()

    convert("rlhf_v", data, source=str(source), subset=Subset("first", 2))  # other rows: the training is redone
    runner.run_experiment(experiment)
    assert commands[2:] == ["llamafactory-cli", "lmms-eval"]
    recorded = json.loads((tmp_path / "out" / "results.json").read_text())["runs"][0]["training"]["data"]
    assert (recorded["rlhf_v"]["subset"], recorded["rlhf_v"]["rows_read"]) == ({"kind": "first", "rows": 2}, 2)


def test_a_yaml_syntax_error_is_one_line_naming_the_file_line_and_column(tmp_path):
    path = tmp_path / "experiment.yaml"
    path.write_text(
        "output: results/x\nruns:\n  - name: dpo\n    train: [dpo.yaml\nevaluation: {tasks: [shapes_caption]}\n"
    )
    done = subprocess.run(
        [str(Path(sys.executable).with_name("ue-dpo")), "run", str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (done.returncode, done.stdout) == (2, "")
    # PyYAML's marks are 0-based: the flow sequence opens at line 4, column 12 (1-based) and is never closed.
    assert done.stderr == (
        f"ue-dpo run: error: experiment file {path} is not valid YAML: while parsing a flow sequence "
        f"(line 4, column 12): expected ',' or ']', but got ':' (line 5, column 11); fix its syntax\n"
    )


def test_a_training_yaml_with_a_syntax_error_is_named_with_its_run(base_dir):
    (base_dir / "broken.yaml").write_text("stage: dpo\ndo_train: true\n\tseed: 3\n")
    with pytest.raises(
        ExperimentConfigError,
        match=re.escape(
            f"runs.dpo.train: {base_dir / 'broken.yaml'} is not valid YAML: while scanning for the next token: found "
            "character '\\t' that cannot start any token (line 3, column 1); fix its syntax"
        ),
    ):
        parse_experiment(changed("runs.dpo.train", "broken.yaml"), base_dir=base_dir)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            ["--set", "runs.dpo.overrides.max_steps=[2"],
            (
                "ue-dpo run: error: --set 'runs.dpo.overrides.max_steps=[2': the "
                "value is not valid YAML (while parsing a flow sequence"
            ),
        ),
        (
            ["--set", "evaluation.batch_size=0"],
            ("ue-dpo run: error: evaluation.batch_size: must be a positive integer, got 0\n"),
        ),
    ],
)
def test_experiment_errors_are_printed_alone_and_exit_2(base_dir, settings, message, capsys):
    path = base_dir / "experiment.yaml"
    path.write_text(yaml.safe_dump(VALID))
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(path), *settings])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(message)


def test_a_failed_stage_is_printed_alone_and_exits_1(tmp_path, capsys):
    path = tmp_path / "experiment.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "output": str(tmp_path / "out"),
                "runs": [{"name": "base", "checkpoint": "m"}],
                "evaluation": {"tasks": ["shapes_caption"], "launcher": ["no-such-lmms-eval"]},
            }
        )
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(path)])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == (
        f"ue-dpo run: error: `no-such-lmms-eval` was not found beside {sys.executable} or "
        "on PATH; install it (pip install ue-dpo brings llamafactory-cli and lmms-eval)\n"
    )
    assert not (tmp_path / "out" / "state").exists()  # nothing was marked finished


T_975_ONE_DEGREE = 12.7062047  # Student t's 97.5% quantile with 1 degree of freedom (two seeds), from the table


def test_seeds_train_every_run_per_seed_from_the_same_seed_of_the_run_it_names(base_dir, tmp_path, monkeypatch):
    """Stand-in tools: each seed of each run is its own training and evaluation; a finished seed is skipped."""
    (base_dir / "ue.yaml").write_text(yaml.safe_dump({"stage": "ue_dpo", "do_train": True, "seed": 3, "ue_seed": 9}))
    chair_s = {"base": 40.0, "warmup@seed0": 30.0, "warmup@seed1": 34.0, "ue@seed0": 10.0, "ue@seed1": 16.0}
    trained, evaluated = [], []

    def finished_subprocess(command, *, env, log_path, cwd=None):
        if command[1] == "train":
            config = yaml.safe_load(Path(command[2]).read_text())
            trained.append(config)
            Path(config["output_dir"]).mkdir(parents=True)
            (Path(config["output_dir"]) / "trainer_state.json").write_text("{}")
        else:
            for entry in yaml.safe_load(Path(command[-1]).read_text()):
                name = Path(entry["output_path"]).parent.name  # evals/<model>/<protocol>
                evaluated.append(name)
                results = copy.deepcopy(LMMS_EVAL_RESULTS)
                results["results"]["shapes_caption"]["chair_s,none"] = chair_s[name]
                write_lmms_eval_output(
                    Path(entry["output_path"]), results=results, tasks_with_samples=["shapes_caption"]
                )
        return 0

    monkeypatch.setattr(runner, "stream", finished_subprocess)
    out = tmp_path / "out"
    experiment = parse_experiment(
        {
            "output": str(out),
            "seeds": [0, 1],
            "baseline": "warmup",
            "evaluation": {"tasks": ["shapes_caption"]},
            "runs": [
                {"name": "base", "checkpoint": "some/model"},
                {"name": "warmup", "train": "dpo.yaml"},
                {"name": "ue", "train": "ue.yaml", "overrides": {"model_name_or_path": "${runs.warmup}"}},
            ],
        },
        base_dir=base_dir,
    )
    runner.run_experiment(experiment)

    runs = out.resolve() / "runs"
    assert [
        (Path(config["output_dir"]).name, config["seed"], config.get("ue_seed"), config.get("model_name_or_path"))
        for config in trained
    ] == [
        ("warmup@seed0", 0, None, None),
        ("warmup@seed1", 1, None, None),
        ("ue@seed0", 0, 0, str(runs / "warmup@seed0")),
        ("ue@seed1", 1, 1, str(runs / "warmup@seed1")),
    ]
    assert evaluated == ["base", "warmup@seed0", "warmup@seed1", "ue@seed0", "ue@seed1"]  # the checkpoint once
    results = json.loads((out / "results.json").read_text())
    base, warmup, ue = results["runs"]
    assert "per_seed" not in base and base["model"] == "some/model"
    assert [model["metrics"]["shapes_caption"]["chair_s"] for model in ue["per_seed"]] == [10.0, 16.0]
    # 10 and 16: mean 13, s / sqrt(2) = 3; per-seed differences from the warm-up -20 and -18: mean -19, s / sqrt(2) = 1
    assert ue["metrics"]["shapes_caption"]["chair_s"] == 13.0 and ue["metrics"]["shapes_caption"]["chair_i"] is None
    assert ue["intervals"]["shapes_caption"]["chair_s"] == pytest.approx(
        [13 - 3 * T_975_ONE_DEGREE, 13 + 3 * T_975_ONE_DEGREE]
    )
    comparison = results["comparison"]["runs"]
    assert comparison["ue"]["tasks"]["shapes_caption"]["chair_s"] == pytest.approx(
        {"delta": -19.0, "low": -19 - T_975_ONE_DEGREE, "high": -19 + T_975_ONE_DEGREE}
    )
    # the checkpoint against each warm-up seed: 40 - 30 and 40 - 34, mean 8, s / sqrt(2) = 2
    assert comparison["base"]["seed_pairs"] == [[None, 0], [None, 1]]
    assert comparison["base"]["tasks"]["shapes_caption"]["chair_s"] == pytest.approx(
        {"delta": 8.0, "low": 8 - 2 * T_975_ONE_DEGREE, "high": 8 + 2 * T_975_ONE_DEGREE}
    )
    table = (out / "results.md").read_text()
    assert (
        "| run | shapes_caption chair_s ↓ | shapes_caption chair_s Δ vs baseline [95% CI] | shapes_caption "
        "chair_i | shapes_caption chair_i Δ vs baseline [95% CI] |" in table
    )
    low, high = 13 - 3 * T_975_ONE_DEGREE, 13 + 3 * T_975_ONE_DEGREE
    assert (
        f"| ue | 13.00 [{low:.2f}, {high:.2f}] | -19.00 [{-19 - T_975_ONE_DEGREE:+.2f}, "
        f"{-19 + T_975_ONE_DEGREE:+.2f}] | – | – |" in table
    )
    assert "| warmup | 32.00 [" in table and "| (baseline) | – | (baseline) |" in table
    assert "| base | 40.00 | +8.00 [" in table
    assert "| ue (seed 1) | `" + str(runs / "ue@seed1") + "` | 1 | 1 |" in table

    for marker in ("train-ue@seed1", "eval-ue@seed1"):  # one seed lost: only it is trained and evaluated again
        (out / "state" / f"{marker}.done.json").unlink()
    trained.clear(), evaluated.clear()
    runner.run_experiment(experiment)
    assert [Path(config["output_dir"]).name for config in trained] == ["ue@seed1"] and evaluated == ["ue@seed1"]


def test_a_checkpoint_whose_weights_were_replaced_in_place_is_evaluated_again(tmp_path, monkeypatch):
    """The evaluation of a `checkpoint:` run is current while its weight files are; replaced in place, it is redone."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llava"}')
    weights = model / "model.safetensors"
    weights.write_bytes(b"\0" * 64)
    evaluated = []

    def finished_evaluation(command, *, env, log_path, cwd=None):
        for entry in yaml.safe_load(Path(command[-1]).read_text()):
            evaluated.append(Path(entry["output_path"]).parent.name)
            write_lmms_eval_output(
                Path(entry["output_path"]), results=LMMS_EVAL_RESULTS, tasks_with_samples=["shapes_caption"]
            )
        return 0

    monkeypatch.setattr(runner, "stream", finished_evaluation)
    experiment = parse_experiment(
        {
            "output": str(tmp_path / "out"),
            "evaluation": {"tasks": ["shapes_caption"]},
            "runs": [{"name": "base", "checkpoint": str(model)}],
        },
        base_dir=tmp_path,
    )
    runner.run_experiment(experiment)
    runner.run_experiment(experiment)
    assert evaluated == ["base"]  # nothing changed: skipped

    stat = weights.stat()
    weights.write_bytes(b"\1" * 64)  # same name, same size, other weights
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    runner.run_experiment(experiment)
    assert evaluated == ["base", "base"]


def test_the_settings_the_experiment_file_is_checked_against_are_lmms_evals():
    import inspect

    from lmms_eval.models.chat.openai import OpenAICompatible
    from lmms_eval.models.simple.openai import OpenAICompatible as SimpleOpenAICompatible

    from ue_dpo.evaluation import model_settings
    from ue_dpo.evaluation.model import GENERATION_KWARGS

    assert model_settings.GENERATION_KWARGS["ue_dpo_hf"] == GENERATION_KWARGS
    taken = [
        name
        for model in (SimpleOpenAICompatible, OpenAICompatible)
        for name, parameter in inspect.signature(model.__init__).parameters.items()
        if name != "self" and parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD)
    ]
    assert sorted(set(taken)) == sorted(model_settings.SERVED_MODEL_ARGS)
    # what the chat model's payload carries (besides `n`, which must be 1)
    source = inspect.getsource(OpenAICompatible.generate_until) + inspect.getsource(
        sys.modules[SimpleOpenAICompatible.__module__]
    )
    for name in model_settings.SERVED_GENERATION_KWARGS:
        assert f'"{name}"' in source, name
