"""The docs stay runnable and whole.

- Every command in a ```bash block of README.md and docs/*.md has a row in RUN_BY, which names the test function
  (or `.ci/run`) that runs it, or in NOT_RUN, which says why nothing runs it and which test checks what it needs.
  A row is checked against the code it names: the test function exists, and its code (with the fixtures and
  helpers it uses) reads the doc file the command is in, or holds the command's program, subcommand, flags and
  files. A row that matches no command any more fails too.
- Relative links in README.md, docs/*.md, configs/README.md and bench/RESULTS.md point at files, and at
  headings, that exist.
- configs/README.md lists every file under configs/.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from readme_training import README_HEADING, key_defaults, readme_configs, readme_training_yaml

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
DOCS = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))
LINKED = (*DOCS, REPO / "configs" / "README.md", REPO / "bench" / "RESULTS.md")


@dataclass(frozen=True)
class Runner:
    target: str  # "tests/test_x.py::test_name", or ".ci/run"
    reads: str | None = None  # the doc file the test reads the command from; None: the test spells the command itself
    evidence: tuple[str, ...] = ()  # strings the runner's code holds: program, subcommand, flags, files
    note: str = ""  # how the run differs from the doc's command


# A doc command matches the row whose key is the command or its longest prefix (comments and line breaks dropped).
RUN_BY: dict[str, tuple[Runner, ...]] = {
    "make demo": (
        Runner(".ci/run", evidence=("make demo",)),
        Runner(
            "tests/test_demo.py::test_the_rerun_skips_finished_stages_and_resumes_training_from_the_checkpoint",
            evidence=("make", "demo", "DEMO_ARGS="),
            note="at small sizes (DEMO_ARGS), killed and run again",
        ),
    ),
    "make test": (Runner(".ci/run", evidence=("make test",)),),
    "make lock": (
        Runner(
            "tests/test_environment.py::test_the_refresh_command_resolves_a_lock_within_pyprojects_ranges",
            evidence=("locked_env.py", "lock", "--venv"),
            note="runs the Makefile's `lock` recipe, tools/locked_env.py lock, writing a copy of the lock",
        ),
    ),
    "pip install .": (
        Runner(
            "tests/test_packaging.py::test_wheel_installs_the_hook_that_registers_the_stage",
            evidence=("pip", "wheel", "install"),
            note="builds this checkout's wheel with pip and installs it with pip, without dependencies",
        ),
    ),
    "llamafactory-cli train my_experiment.yaml": (
        Runner(
            "tests/test_train_e2e.py::test_lora_training_logs_ue_metrics_and_saves_the_adapter",
            evidence=("llamafactory-cli", "train", "ue_dpo", "lora"),
            note="a `stage: ue_dpo` LoRA YAML on tiny local LLaVA and Qwen2-VL models",
        ),
    ),
    "lmms-eval --model ue_dpo_hf --model_args pretrained=saves/llava15_7b/rlaif_v/ue_dpo": (
        Runner(
            "tests/test_lmms_eval_e2e.py::test_a_lora_output_dir_answers_with_its_adapter",
            evidence=(
                "lmms-eval",
                "--model",
                "ue_dpo_hf",
                "--model_args",
                "pretrained=",
                "--tasks",
                "--log_samples",
                "--output_path",
                "object_halbench,mmhal_bench,amber",
                "batch_size",
            ),
            note="the plain flags on a tiny LoRA output folder with shapes_caption; object_halbench, "
            "mmhal_bench and amber (on mini official-format data) and batch_size through a --config list",
        ),
    ),
    "lmms-eval --model llava_hf --model_args pretrained=merged/llava,device_map=auto --force_simple": (
        Runner(
            "tests/test_lmms_eval_e2e.py::test_lmms_evals_own_models_score_our_tasks_on_merged_checkpoints",
            evidence=("lmms-eval", "llava_hf", "llamafactory-cli", "export", "device_map=", "--force_simple"),
            note="on a tiny LoRA run merged by llamafactory-cli export, with shapes_caption, on CPU",
        ),
    ),
    "lmms-eval --model qwen2_5_vl --model_args pretrained=merged/qwen,device_map=auto --force_simple": (
        Runner(
            "tests/test_lmms_eval_e2e.py::test_lmms_evals_own_models_score_our_tasks_on_merged_checkpoints",
            evidence=("lmms-eval", "qwen2_5_vl", "device_map=", "--force_simple"),
            note="on a tiny Qwen2.5-VL checkpoint, with shapes_caption, on CPU",
        ),
    ),
    "ue-dpo run configs/experiments/embedded_default.yaml": (
        Runner(
            "tests/test_demo.py::test_seeds_give_means_intervals_and_deltas_and_each_seed_resumes_on_its_own",
            evidence=("ue-dpo", "run", "configs/experiments/embedded_default.yaml", "--set"),
            note="with --set at small sizes, on the folder of the test's `make demo`",
        ),
    ),
    "ue-dpo run configs/experiments/embedded_default.yaml --set 'seeds=[0, 1, 2, 3, 4]'": (
        Runner(
            "tests/test_demo.py::test_seeds_give_means_intervals_and_deltas_and_each_seed_resumes_on_its_own",
            reads="README.md",
            evidence=("ue-dpo", "run", "--set", "seeds=[0, 1]"),
            note="the README's command, plus --set at small sizes and two seeds",
        ),
    ),
    "ue-dpo run configs/experiments/embedded_peers.yaml": (
        Runner(
            "tests/test_demo.py::test_the_peers_experiment_adds_ddpo_and_tpo_to_the_demo_folder",
            evidence=("ue-dpo", "run", "embedded_peers.yaml", "--out"),
            note="with --set at small sizes, on the folder of the test's `make demo`",
        ),
    ),
    "OMP_NUM_THREADS=1 ue-dpo run configs/experiments/embedded_blind_spots.yaml": (
        Runner(
            (
                "tests/test_blind_spots.py::"
                "test_the_small_run_reports_faint_recall_as_the_manifest_and_responses_give_it"
            ),
            evidence=("ue-dpo", "run", "embedded_blind_spots.yaml"),
            note="the file at small sizes, UE-DPO alone with two seeds, compared with the warm-up",
        ),
    ),
    "ue-dpo inspect --model blind_spots_output/runs/warmup --data blind_spots_pref": (
        Runner(
            "tests/test_blind_spots.py::test_inspect_counts_type_i_tokens_on_faint_shape_words",
            evidence=(
                "ue-dpo",
                "inspect",
                "--model",
                "warmup",
                "--data",
                "--dataset-dir",
                "synthetic",
                "data",
                "--n",
                "--word-group",
                "faint=",
                "--out",
            ),
            note="on the small run's warm-up; the word group's regex and dataset are checked below",
        ),
    ),
    "ue-dpo perceivability --model blind_spots_output/runs/warmup": (
        Runner(
            "tests/test_perceivability.py::test_the_probe_sees_black_faint_shapes_and_not_almost_white_ones",
            evidence=("perceivability", "--model", "--eval-dir", "--out"),
            note="on the session's random tiny Qwen2-VL and held-out sets drawn at grey 0 and 254",
        ),
    ),
    "ue-dpo inspect --model saves/llava15_7b/rlaif_v/ue_dpo --data data/rlaif_v.json": (
        Runner(
            (
                "tests/test_inspect.py::"
                "test_the_page_has_one_span_per_response_token_with_the_training_computations_values"
            ),
            evidence=("ue-dpo", "inspect", "--model", "--data", "--n", "--out"),
            note="on a tiny Qwen2-VL LoRA folder and a shapes preference file",
        ),
    ),
    "ue-dpo data rlhf_v --out data": (
        Runner(
            "tests/test_docs.py::test_the_data_commands_convert_local_copies_of_the_public_files",
            reads="docs/data.md",
            note="with --source: a local copy in the hub's file format, not a download",
        ),
    ),
    "ue-dpo data rlaif_v --out data --first 16000": (
        Runner(
            "tests/test_docs.py::test_the_data_commands_convert_local_copies_of_the_public_files",
            reads="docs/data.md",
            note="with --source: a local copy in the hub's file format, not a download; "
            "--first 5, all of the copy's rows",
        ),
        Runner(
            "tests/test_datasets.py::test_cli_converts_and_reports_or_stops_with_a_message_naming_the_sample",
            evidence=("ue-dpo", "data", "rlaif_v", "--out", "--source", "--first"),
            note="--first 3",
        ),
    ),
    "ue-dpo score amber --data-dir AMBER/data --responses responses.json --json": (
        Runner(
            "tests/test_score_cli.py::test_score_amber_json",
            evidence=("ue-dpo", "score", "amber", "--data-dir", "--responses", "--json"),
            note="on official-format fixtures, with --spacy-model naming the test pipeline",
        ),
    ),
    "ue-dpo score object_halbench --coco-dir coco/annotations --responses answers.jsonl --json": (
        Runner(
            "tests/test_score_cli.py::test_score_object_halbench_json_and_cached_ground_truth",
            evidence=("ue-dpo", "score", "object_halbench", "--coco-dir", "--responses", "--json"),
        ),
    ),
    "ue-dpo score mmhal_bench --responses response_template_with_answers.json --judge-model gpt-4-1106-preview": (
        Runner(
            "tests/test_score_cli.py::test_score_mmhal_bench_json_with_a_local_judge_and_its_cache",
            evidence=("ue-dpo", "score", "mmhal_bench", "--responses", "--judge-model", "--json"),
            note="the judge is a loopback OpenAI-compatible server",
        ),
    ),
    "ue-dpo compare dpo ue_dpo --experiment demo_output": (
        Runner(
            "tests/test_paired_comparison.py::test_the_readme_commands_print_the_table_and_the_json",
            reads="docs/evaluation.md",
            note="on a hand-made demo_output folder of two evaluated runs",
        ),
    ),
    "ue-dpo compare demo_output/evals/dpo demo_output/evals/ue_dpo --json --seed 0 --resamples 1000": (
        Runner(
            "tests/test_paired_comparison.py::test_the_readme_commands_print_the_table_and_the_json",
            reads="docs/evaluation.md",
            note="on a hand-made demo_output folder of two evaluated runs",
        ),
    ),
    "python bench/run.py": (
        Runner(
            "tests/test_bench.py::test_bench_table_is_computed_from_the_measured_runs_and_keeps_the_notes",
            evidence=("bench", "run.py", "--results"),
            note="at tiny sizes, two configurations, one round",
        ),
    ),
}


# Commands nothing runs: why, and the test that checks what they need.
@dataclass(frozen=True)
class NotRun:
    reason: str
    check: str  # "tests/test_x.py::test_name"


NOT_RUN: dict[str, NotRun] = {
    "llamafactory-cli train configs/train/llava15_7b_rlaif_v_ue_dpo.yaml": NotRun(
        reason=(
            "LoRA training of LLaVA-1.5-7B on 16k RLAIF-V pairs needs GPUs, the hub model and the converted data; "
            "the test parses every recipe with LLaMA-Factory's own parser (the stage itself trains in "
            "tests/test_train_e2e.py)"
        ),
        check="tests/test_configs.py::test_recipes_parse_with_llamafactory_and_name_files_that_exist",
    ),
    "ue-dpo run configs/experiments/paper_llava15_7b_rlaif_v.yaml": NotRun(
        reason=(
            "trains LLaVA-1.5-7B twice and evaluates three models on the real benchmarks with an LLM judge: "
            "GPUs, data, a judge; the test loads the file and checks its protocol and judge"
        ),
        check=(
            "tests/test_configs.py::test_paper_experiments_spell_out_the_protocol_task_by_task_and_name_a_live_judge"
        ),
    ),
    "ue-dpo run configs/experiments/paper_llava15_7b_rlaif_v_peers.yaml": NotRun(
        reason=(
            "the paper experiment with DDPO and TPO added: GPUs, data, a judge; the test checks that its runs "
            "differ from DPO only in the method keys"
        ),
        check=(
            "tests/test_configs.py::"
            "test_peer_experiments_add_ddpo_and_tpo_runs_that_differ_from_dpo_only_in_the_method_keys"
        ),
    ),
    "OMP_NUM_THREADS=1 ue-dpo run configs/experiments/embedded_blind_spots_peers.yaml": NotRun(
        reason=(
            "20 trainings and evaluations of the blind-spot world (about 15 minutes on 2 cores): a study, run by "
            "hand and reported in docs/blind_spots.md; the test loads the file and its training configs"
        ),
        check="tests/test_configs.py::test_every_experiment_file_loads_and_names_training_configs_that_exist",
    ),
    "OMP_NUM_THREADS=1 ue-dpo run configs/experiments/blind_spots_visibility.yaml": NotRun(
        reason=(
            "6 worlds and warm-ups and 120 trainings and evaluations of the blind-spot world (hours on 2 cores): "
            "the declared study, run by hand and reported in docs/visibility_study.md; the test loads the file, "
            "every cell of its sweep included, and its training configs"
        ),
        check="tests/test_configs.py::test_every_experiment_file_loads_and_names_training_configs_that_exist",
    ),
    "ue-dpo run configs/experiments/paper_llava15_7b_rlhf_v_table1.yaml": NotRun(
        reason=(
            "trains LLaVA-1.5-7B eight times and evaluates nine models on the real benchmarks with an LLM judge: "
            "GPUs, data, a judge; the test checks that its runs differ from DPO only in the method keys"
        ),
        check=(
            "tests/test_configs.py::"
            "test_the_table_1_experiment_trains_every_method_from_recipes_that_differ_from_dpo_only_in_the_method_keys"
        ),
    ),
}


def bash_commands(path: Path) -> list[str]:
    """The commands of the file's ```bash blocks: one per line (backslash continuations joined), comments dropped."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", path.read_text(), re.DOTALL | re.MULTILINE):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(" ".join(shlex.quote(word) for word in words))
    return commands


def normalised(command: str) -> str:
    return " ".join(shlex.quote(word) for word in shlex.split(command, comments=True))


def matching_key(command: str, keys) -> str | None:
    found = [key for key in keys if command == normalised(key) or command.startswith(normalised(key) + " ")]
    return max(found, key=len) if found else None


def doc_commands() -> list[tuple[str, str]]:
    return [(path.relative_to(REPO).as_posix(), command) for path in DOCS for command in bash_commands(path)]


def test_the_docs_have_commands_and_the_table_reads_them():
    files = {doc for doc, _ in doc_commands()}
    assert {"README.md", "docs/evaluation.md", "docs/experiments.md", "docs/blind_spots.md"} <= files
    assert normalised("ue-dpo run x.yaml --set 'seeds=[0, 1]'  # a comment") == "ue-dpo run x.yaml --set 'seeds=[0, 1]'"


def test_every_command_in_the_docs_is_run_by_a_test_or_ci_or_said_why_not():
    unlisted = [
        f"{doc}: {command}" for doc, command in doc_commands() if matching_key(command, [*RUN_BY, *NOT_RUN]) is None
    ]
    assert not unlisted, "commands in no row of RUN_BY or NOT_RUN in tests/test_docs.py:\n" + "\n".join(unlisted)


def test_every_row_matches_a_command_of_the_docs():
    commands = [command for _, command in doc_commands()]
    stale = [
        key
        for key in [*RUN_BY, *NOT_RUN]
        if not any(matching_key(command, [*RUN_BY, *NOT_RUN]) == key for command in commands)
    ]
    assert not stale, f"rows that match no command of the docs: {stale}"


class RunnerCode:
    """The code a test function runs, as far as its module shows it: the function, and the module-level
    functions, fixtures and constants it names, in its module, conftest.py and the helper modules it imports
    from tests/, followed transitively."""

    def __init__(self, target: str):
        module, _, self.name = target.partition("::")
        self.path = REPO / module
        self.definitions: dict[str, list[ast.AST]] = {}
        for path in (self.path, TESTS / "conftest.py"):
            self._read(path, helpers=True)

    def _read(self, path: Path, helpers: bool) -> None:
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                self.definitions.setdefault(node.name, []).append(node)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    for name in ast.walk(target):
                        if isinstance(name, ast.Name):
                            self.definitions.setdefault(name.id, []).append(node)
            elif helpers and isinstance(node, ast.ImportFrom) and node.module:
                helper = TESTS / f"{node.module}.py"
                if helper.is_file():
                    self._read(helper, helpers=False)

    def exists(self) -> bool:
        functions = (ast.FunctionDef, ast.AsyncFunctionDef)
        return any(isinstance(node, functions) for node in self.definitions.get(self.name, []))

    def strings(self) -> set[str]:
        """Every string constant of the function and of what it names, docstrings left out."""
        seen, todo, nodes = set(), [self.name], []
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            for node in self.definitions.get(name, []):
                nodes.append(node)
                for child in ast.walk(node):
                    if isinstance(child, ast.Name):
                        todo.append(child.id)
                    elif isinstance(child, ast.arg):
                        todo.append(child.arg)  # a fixture
        docstrings = {
            id(child.value)
            for node in nodes
            for child in ast.walk(node)
            if isinstance(child, ast.Expr) and isinstance(child.value, ast.Constant)
        }
        return {
            child.value
            for node in nodes
            for child in ast.walk(node)
            if isinstance(child, ast.Constant) and isinstance(child.value, str) and id(child) not in docstrings
        }


@pytest.mark.parametrize("key", sorted(RUN_BY))
def test_each_row_names_code_that_runs_the_command(key):
    docs_with_it = {doc for doc, command in doc_commands() if matching_key(command, RUN_BY) == key}
    for runner in RUN_BY[key]:
        if runner.target == ".ci/run":
            ci = (REPO / ".ci" / "run").read_text()
            lines = [line.strip() for line in ci.splitlines() if not line.lstrip().startswith("#")]
            assert all(any(text in line for line in lines) for text in runner.evidence), (key, runner.evidence)
            continue
        code = RunnerCode(runner.target)
        assert code.exists(), f"{key}: {runner.target} does not exist"
        strings = code.strings()
        missing = [text for text in runner.evidence if not any(text in string for string in strings)]
        assert not missing, f"{key}: the code of {runner.target} no longer holds {missing}"
        if runner.reads is not None:
            assert docs_with_it == {runner.reads}, (
                f"{key} is in {docs_with_it}, and {runner.target} reads {runner.reads}"
            )
            assert any(string in (runner.reads, Path(runner.reads).name) for string in strings), (
                f"{runner.target} no longer reads {runner.reads}"
            )


@pytest.mark.parametrize("key", sorted(NOT_RUN))
def test_each_command_nothing_runs_names_the_test_that_checks_what_it_needs(key):
    row = NOT_RUN[key]
    assert row.reason and RunnerCode(row.check).exists(), f"{key}: {row.check} does not exist"


def test_make_lock_is_the_command_its_test_runs():
    makefile = (REPO / "Makefile").read_text()
    recipe = makefile[makefile.index("\nlock:") + 1 :].splitlines()[1]
    assert recipe.split()[1:3] == ["tools/locked_env.py", "lock"], recipe


def test_the_blind_spot_inspection_counts_the_word_group_and_data_the_test_checks():
    from ue_dpo.synthetic.blind_spots import PREFERENCE_DATASET
    from ue_dpo.synthetic.vocabulary import FAINT_SHAPE_WORDS

    (command,) = [
        shlex.split(command)
        for doc, command in doc_commands()
        if doc == "docs/blind_spots.md" and command.startswith("ue-dpo inspect")
    ]
    assert command[command.index("--data") + 1] == PREFERENCE_DATASET
    assert command[command.index("--word-group") + 1] == f"faint={FAINT_SHAPE_WORDS}"


def test_the_data_commands_convert_local_copies_of_the_public_files(tmp_path, monkeypatch):
    """docs/data.md's `ue-dpo data` commands, each with --source naming a local copy in the hub's file format
    (and --first 5, all of its rows, for --first 16000)."""
    from public_preference_files import write_rlaif_v, write_rlhf_v
    from ue_dpo.cli import main

    sources = {
        "rlhf_v": write_rlhf_v(tmp_path / "RLHF-V-Dataset"),
        "rlaif_v": write_rlaif_v(tmp_path / "RLAIF-V-Dataset"),
    }
    commands = [
        shlex.split(command)
        for doc, command in doc_commands()
        if doc == "docs/data.md" and command.startswith("ue-dpo data")
    ]
    assert [command[2] for command in commands] == ["rlhf_v", "rlaif_v"]
    monkeypatch.chdir(tmp_path)
    for command in commands:
        if "--first" in command:  # the local copy holds 5 rows: take them all
            command[command.index("--first") + 1] = "5"
        main([*command[1:], "--source", str(sources[command[2]])])
    info = json.loads((tmp_path / "data" / "dataset_info.json").read_text())
    for name in ("rlhf_v", "rlaif_v"):
        assert info[name]["ranking"] is True
        assert json.loads((tmp_path / "data" / f"{name}.json").read_text())
        assert (tmp_path / "data" / f"{name}_source.json").is_file()


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (but - and _), spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found, counts = set(), {}
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.DOTALL | re.MULTILINE)
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE):
        base = slug(heading)
        found.add(base if base not in counts else f"{base}-{counts[base]}")
        counts[base] = counts.get(base, 0) + 1
    return found


@pytest.mark.parametrize("path", LINKED, ids=lambda path: path.relative_to(REPO).as_posix())
def test_relative_links_point_at_files_and_headings_that_exist(path):
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.DOTALL | re.MULTILINE)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no such heading in {linked.relative_to(REPO)}")
    assert not broken, broken


# A cell of measured numbers: 1.56, −23.12 [−30.81, −15.44], 0.78x, 26.2%, 2.39-2.52, 11,836, or – (undefined).
NUMBER_CELL = re.compile(r"^[−+-]?[\d,]*\.?\d+(x|%)?( \[[−+\-\d., ]+\])?$|^[\d.]+-[\d.]+$|^–$")
# The names a machine goes by in these pages: the CPU, or the GPU.
MACHINE_NAME = re.compile(r"Intel Xeon|Intel\(R\) Xeon|AMD EPYC|NVIDIA H\d00|H100|H200")


def tables_of_numbers(text: str) -> list[tuple[int, int]]:
    """(first line, line after the last) of each Markdown table most of whose body cells, past the row label, are
    numbers: measurements, as opposed to tables of keys, pages or tasks."""
    lines, tables, index = text.splitlines(), [], 0
    while index < len(lines) - 1:
        if lines[index].startswith("|") and lines[index + 1].startswith("|---"):
            end = index + 2
            while end < len(lines) and lines[end].startswith("|"):
                end += 1
            cells = [cell.strip() for row in lines[index + 2 : end] for cell in row.strip("|").split("|")[1:]]
            if cells and sum(bool(NUMBER_CELL.match(cell)) for cell in cells) > len(cells) / 2:
                tables.append((index, end))
            index = end
        else:
            index += 1
    return tables


@pytest.mark.parametrize("path", LINKED, ids=lambda path: path.relative_to(REPO).as_posix())
def test_every_table_of_measured_numbers_names_the_machine_that_produced_it(path):
    """Digits can change with the machine (docs/blind_spots.md, "Which machine"): the text between a table of
    numbers and the table before it (or the top of the page) names the CPU or GPU that measured it."""
    lines = path.read_text().splitlines()
    unnamed, previous_end = [], 0
    for start, end in tables_of_numbers(path.read_text()):
        if not MACHINE_NAME.search("\n".join(lines[previous_end:start])):
            unnamed.append(f"line {start + 1}: {lines[start][:60]}")
        previous_end = end
    assert not unnamed, f"tables that name no machine since the table before: {unnamed}"


def test_the_configs_index_lists_every_config_file():
    index = REPO / "configs" / "README.md"
    listed = {(index.parent / target).resolve() for target in re.findall(r"\]\(([^)#\s]+)\)", index.read_text())}
    files = {path.resolve() for path in (REPO / "configs").rglob("*") if path.is_file() and path != index}
    assert not sorted(files - listed), f"configs/README.md does not list: {sorted(files - listed)}"


def test_the_readme_training_yaml_parses_and_its_key_table_gives_the_defaults(llamafactory_parsed):
    """The README's training YAML as LLaMA-Factory's parser reads it, and, without the table's keys, the defaults
    that the README's key table and docs/method.md's give (the parse is shared with test_configs.py's recipes, in
    conftest.py)."""
    config = readme_training_yaml()
    shown = key_defaults(REPO / "README.md", README_HEADING)
    reference = key_defaults(REPO / "docs" / "method.md", "## Keys\n")
    assert {"ue_alpha", "ue_tau", "ue_noise_step", "ue_weighting", "pref_beta"} <= set(shown)
    configs = readme_configs()
    assert configs["readme.yaml"] == config
    assert configs["defaults.yaml"] == {key: value for key, value in config.items() if key not in shown}
    parsed, _ = llamafactory_parsed
    as_written = parsed["readme.yaml"]
    assert (as_written["stage"], as_written["ue_dpo_stage"]) == ("dpo", True)  # how the parser records ue_dpo
    for key in (
        "model_name_or_path",
        "template",
        "finetuning_type",
        "lora_rank",
        "ue_alpha",
        "pref_beta",
        "output_dir",
    ):
        assert as_written[key] == config[key], key
    assert as_written["datasets"][0]["ranking"] is True
    defaults = parsed["defaults.yaml"]
    for key in ("ue_alpha", "ue_tau", "ue_noise_step", "ue_weighting", "pref_beta"):
        assert str(defaults[key]) == shown[key], (key, defaults[key], shown[key])
    for key in (
        "ue_alpha",
        "ue_tau",
        "ue_noise_step",
        "ue_noise_schedule",
        "ue_noise_space",
        "ue_branches",
        "ue_weighting",
    ):
        assert str(defaults[key]) == reference[key], (key, defaults[key], reference[key])
