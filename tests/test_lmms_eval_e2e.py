"""The real `lmms-eval` CLI with `--model ue_dpo_hf` on tiny local models, base and LoRA output dirs, on
`shapes_caption` and on mini fixtures of object_halbench, mmhal_bench and amber (judge: a loopback server), and
lmms-eval's own `llava_hf` / `qwen2_5_vl` models on merged checkpoints, and `ue-dpo run` of one of them on 2
processes with a protocol per task.

lmms-eval exits 0 even when an evaluation fails, so every run is checked through the files it writes. To keep
its slow start-ups few, one run uses the plain flags of the README and one a `--config` list of runs.
No run passes --include_path: the tasks are found by the installed discovery patch.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from benchmark_fixtures import (
    judge_by_type,
    write_amber_data_dir,
    write_amber_images,
    write_coco_files,
    write_mmhal_dir,
    write_object_halbench_questions,
)
from judge_server import ScriptedJudgeServer
from llamafactory_runs import offline_env, train_in_one_process
from nlp_resources import install_test_resources
from tiny_training_config import tiny_training_config
from ue_dpo.cli import main as ue_dpo_main
from ue_dpo.synthetic.shapes import EVAL_MANIFEST, SHAPES

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
EVAL_IMAGES = 5
MAX_NEW_TOKENS = 24
JUDGE_MODEL = "judge-x"
MMHAL_ITEMS = 8
SHAPES_METRICS = ("chair_s", "chair_s_all", "chair_i", "recall", "mean_shapes_mentioned")
RUNS = ("qwen2_vl_base", "qwen2_vl_lora", "llava_base", "llava_lora")


def run_cli(args: list[str], workdir: Path, **env: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        args, cwd=workdir, env=offline_env(**env), capture_output=True, text=True, timeout=600, check=False
    )
    (workdir / f"{Path(args[0]).name}.log").write_text(result.stdout + result.stderr)
    return result


def only_file(directory: Path, pattern: str) -> Path:
    found = sorted(directory.rglob(pattern))
    assert len(found) == 1, f"expected one {pattern} under {directory}, found {found}"
    return found[0]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("lmms_eval_e2e")


@pytest.fixture(scope="module")
def shapes_eval_dir(workdir):
    result = run_cli(
        [str(BIN / "ue-dpo"), "shapes-eval", "--out", "shapes_eval", "--images", str(EVAL_IMAGES)], workdir
    )
    assert result.returncode == 0, result.stderr
    return workdir / "shapes_eval"


@pytest.fixture(scope="module")
def checkpoints(workdir, tiny_llava_dir, tiny_qwen2_vl_dir, shapes_dataset_dir):
    """Each tiny base model and a LoRA output dir of a real LLaMA-Factory training (stage: ue_dpo) on it, both
    trained through `run_exp` in one process (the CLI's own start is test_train_e2e's)."""
    bases = {"qwen2_vl": tiny_qwen2_vl_dir, "llava": tiny_llava_dir}
    configs = {
        arch: tiny_training_config(arch, base, shapes_dataset_dir, workdir / f"{arch}_lora")
        for arch, base in bases.items()
    }
    logs = train_in_one_process({arch: (config, workdir / f"{arch}_train") for arch, config in configs.items()})
    paths = {}
    for arch, base in bases.items():
        assert logs[arch], f"{arch}: no training step was logged"
        paths[f"{arch}_base"], paths[f"{arch}_lora"] = base, workdir / f"{arch}_lora"
    return paths


@pytest.fixture(scope="module")
def benchmark_env(workdir):
    """Environment of the benchmark tasks: mini official-format data, test NLP resources, the judge settings."""
    resources = install_test_resources()
    object_halbench_dir = write_object_halbench_questions(workdir / "object_halbench")
    write_coco_files(object_halbench_dir / "annotations")
    return {
        "UE_DPO_AMBER_DIR": str(write_amber_data_dir(workdir / "amber" / "data")),
        "UE_DPO_AMBER_IMAGE_DIR": str(write_amber_images(workdir / "amber" / "images")),
        "UE_DPO_AMBER_SPACY_MODEL": str(resources.spacy_pipeline),
        "UE_DPO_OBJECT_HALBENCH_DIR": str(object_halbench_dir),
        "UE_DPO_MMHAL_DIR": str(write_mmhal_dir(workdir / "mmhal", count=MMHAL_ITEMS)),
        "UE_DPO_JUDGE_MODEL": JUDGE_MODEL,
        "UE_DPO_JUDGE_CACHE_DIR": str(workdir / "judge_cache"),
        # the fixture judge's "Rating:4" is unparsed: asked once and scored 0, as the official script does
        "UE_DPO_JUDGE_MAX_RETRIES": "0",
        "UE_DPO_JUDGE_UNPARSED_AS_ZERO": "1",
        "UE_DPO_CACHE_DIR": str(workdir / "cache"),
        "UE_DPO_NLTK_DOWNLOAD": "0",
        "NLTK_DATA": str(resources.nltk_dir),
        "OPENAI_API_KEY": "sk-test-key",
    }


@pytest.fixture(scope="module")
def judge_server():
    with ScriptedJudgeServer(judge_by_type, lifetime_seconds=900) as server:
        yield server


@pytest.fixture(scope="module")
def evaluations(workdir, shapes_eval_dir, checkpoints, benchmark_env, judge_server):
    """run name -> its output dir; the judge requests the lmms-eval runs made; the log of the --config run."""
    readme_run = run_cli(
        [
            str(BIN / "lmms-eval"),
            "--model",
            "ue_dpo_hf",
            "--model_args",
            f"pretrained={checkpoints['qwen2_vl_lora']}",
            "--tasks",
            "shapes_caption",
            "--gen_kwargs",
            f"max_new_tokens={MAX_NEW_TOKENS}",
            "--log_samples",
            "--output_path",
            "out/qwen2_vl_lora",
        ],
        workdir,
        UE_DPO_SHAPES_EVAL_DIR=str(shapes_eval_dir),
    )
    assert readme_run.returncode == 0, readme_run.stderr[-3000:]
    common = {
        "model": "ue_dpo_hf",
        "log_samples": True,
        "gen_kwargs": f"max_new_tokens={MAX_NEW_TOKENS}",
        "tasks": "shapes_caption",
    }
    configs = [
        {
            **common,
            "model_args": f"pretrained={checkpoints['qwen2_vl_base']},device=cpu,dtype=float32",
            "tasks": "shapes_caption,object_halbench,mmhal_bench,amber",
            "output_path": "out/qwen2_vl_base",
            "env": {
                **benchmark_env,
                "UE_DPO_SHAPES_EVAL_DIR": str(shapes_eval_dir),
                "OPENAI_BASE_URL": judge_server.base_url,
            },
        },
        {
            **common,
            "model_args": f"pretrained={checkpoints['llava_base']}",
            "batch_size": 2,
            "output_path": "out/llava_base",
        },
        {**common, "model_args": f"pretrained={checkpoints['llava_lora']}", "output_path": "out/llava_lora"},
        {
            **common,
            "model_args": f"pretrained={checkpoints['llava_base']}",
            "output_path": "out/failing",
            "gen_kwargs": "max_new_tokens=-1",
        },
    ]
    (workdir / "runs.yaml").write_text(yaml.safe_dump(configs))
    config_run = run_cli([str(BIN / "lmms-eval"), "--config", "runs.yaml"], workdir)
    return {
        "dirs": {name: workdir / "out" / name for name in (*RUNS, "failing")},
        "judge_requests": judge_server.request_count,
        "log": config_run.stdout + config_run.stderr,
    }


def results_of(output_dir: Path) -> dict:
    return json.loads(only_file(output_dir, "*_results.json").read_text())["results"]


def logged_samples(output_dir: Path, task: str = "shapes_caption") -> list[dict]:
    lines = only_file(output_dir, f"*_samples_{task}.jsonl").read_text().splitlines()
    return sorted((json.loads(line) for line in lines), key=lambda sample: sample["doc_id"])


def response_of(sample: dict) -> str:
    response = sample["filtered_resps"]
    return response[0] if isinstance(response, list) else response


def naive_shapes_chair(responses: list[str], truths: list[list[str]]) -> dict:
    """CHAIR counted word by word, written apart from `benchmarks.shapes_chair`."""
    responses_with_mentions = hallucinated_responses = mentions = hallucinated = truth_total = covered = 0
    distinct = 0
    for response, truth in zip(responses, truths):
        named = []
        for word in re.findall(r"\w+", response.lower()):
            singular = word[:-1] if word.endswith("s") and word[:-1] in SHAPES else word
            if singular in SHAPES:
                named.append(singular)
        wrong = [shape for shape in named if shape not in truth]
        responses_with_mentions += bool(named)
        hallucinated_responses += bool(wrong)
        mentions += len(named)
        hallucinated += len(wrong)
        truth_total += len(set(truth))
        covered += len(set(truth) & set(named))
        distinct += len(set(named))
    return {
        "chair_s": 100 * hallucinated_responses / responses_with_mentions if responses_with_mentions else None,
        "chair_s_all": 100 * hallucinated_responses / len(responses),
        "chair_i": 100 * hallucinated / mentions if mentions else None,
        "recall": 100 * covered / truth_total,
        "mean_shapes_mentioned": distinct / len(responses),
    }


@pytest.mark.parametrize("run", RUNS)
def test_shapes_caption_metrics_equal_a_count_over_the_logged_responses(run, evaluations, shapes_eval_dir):
    output_dir = evaluations["dirs"][run]
    samples = logged_samples(output_dir)
    manifest = json.loads((shapes_eval_dir / EVAL_MANIFEST).read_text())
    assert [sample["doc_id"] for sample in samples] == list(range(EVAL_IMAGES))
    truths = [manifest[sample["doc_id"]]["shapes"] for sample in samples]
    expected = naive_shapes_chair([response_of(sample) for sample in samples], truths)
    scored = results_of(output_dir)["shapes_caption"]
    for metric in SHAPES_METRICS:
        if expected[metric] is None:
            assert scored[f"{metric},none"] is None, metric
        else:
            assert scored[f"{metric},none"] == pytest.approx(expected[metric]), metric


@pytest.mark.parametrize("arch", ["qwen2_vl", "llava"])
def test_a_lora_output_dir_answers_with_its_adapter(arch, evaluations):
    base = [response_of(sample) for sample in logged_samples(evaluations["dirs"][f"{arch}_base"])]
    lora = [response_of(sample) for sample in logged_samples(evaluations["dirs"][f"{arch}_lora"])]
    assert all(answer.strip() for answer in base + lora)
    assert base != lora


OBJECT_HALBENCH_LIMIT = 4


@pytest.fixture(scope="module")
def two_process_experiment(workdir, evaluations, checkpoints, shapes_eval_dir, benchmark_env):
    """`ue-dpo run` of the README's LoRA run on 2 processes (torchrun, gloo on CPU) with a protocol per task:
    shapes_caption as the README run but in batches of 2, Object-HalBench on 4 items with beam search."""
    experiment = {
        "output": "experiment",
        "runs": [{"name": "lora", "checkpoint": str(checkpoints["qwen2_vl_lora"])}],
        "evaluation": {
            "tasks": [
                {"name": "shapes_caption", "gen_kwargs": {"max_new_tokens": MAX_NEW_TOKENS}, "batch_size": 2},
                {
                    "name": "object_halbench",
                    "limit": OBJECT_HALBENCH_LIMIT,
                    "gen_kwargs": {"max_new_tokens": 8, "num_beams": 2},
                },
            ],
            "model_args": {"device": "cpu"},
            "launcher": ["torchrun", "--standalone", "--nproc_per_node", "2", "-m", "lmms_eval"],
            "env": {
                **{key: value for key, value in benchmark_env.items() if key != "OPENAI_API_KEY"},
                "UE_DPO_SHAPES_EVAL_DIR": str(shapes_eval_dir),
            },
        },
    }
    folder = workdir / "two_processes"  # not workdir: lmms-eval reads `--tasks object_halbench` as ./object_halbench/
    folder.mkdir()
    (folder / "experiment.yaml").write_text(yaml.safe_dump(experiment))
    result = run_cli([str(BIN / "ue-dpo"), "run", "experiment.yaml"], folder)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return json.loads((folder / "experiment" / "results.json").read_text())["runs"][0]


def test_a_two_process_run_logs_the_samples_and_scores_of_the_one_process_run(two_process_experiment, evaluations):
    one_process = evaluations["dirs"]["qwen2_vl_lora"]
    # 5 documents on 2 ranks: rank 1 also answers a padding request, which must not be logged
    merged = logged_samples(Path(two_process_experiment["evaluation"]["samples_files"]["shapes_caption"]).parent)
    assert [sample["doc_id"] for sample in merged] == list(range(EVAL_IMAGES))
    assert merged == logged_samples(one_process)
    assert two_process_experiment["metrics"]["shapes_caption"] == {
        key.removesuffix(",none"): value
        for key, value in results_of(one_process)["shapes_caption"].items()
        if key != "alias" and "_stderr" not in key
    }


def test_each_tasks_protocol_reaches_lmms_eval_and_results_json_records_it(two_process_experiment, workdir):
    evaluation = two_process_experiment["evaluation"]
    assert evaluation["world_size"] == 2
    protocols = {tuple(protocol["tasks"]): protocol for protocol in evaluation["protocols"]}
    assert {
        tasks: (protocol["backend"], protocol["batch_size"], protocol["gen_kwargs"], protocol["limit"])
        for tasks, protocol in protocols.items()
    } == {
        ("shapes_caption",): ("ue_dpo_hf", 2, {"max_new_tokens": MAX_NEW_TOKENS}, None),
        ("object_halbench",): ("ue_dpo_hf", 1, {"max_new_tokens": 8, "num_beams": 2}, OBJECT_HALBENCH_LIMIT),
    }
    halbench_samples = Path(evaluation["samples_files"]["object_halbench"]).read_text().splitlines()
    assert len(halbench_samples) == OBJECT_HALBENCH_LIMIT  # of the fixture's 6 questions
    results = json.loads(Path(protocols[("object_halbench",)]["results_file"]).read_text())
    generation = results["configs"]["object_halbench"]["generation_kwargs"]
    assert (generation["max_new_tokens"], generation["num_beams"]) == (8, 2)
    assert len(logged_samples(Path(evaluation["samples_files"]["shapes_caption"]).parent)) == EVAL_IMAGES
    assert "world size 2" in (workdir / "two_processes" / "experiment" / "results.md").read_text()


def test_a_generation_error_fails_the_run_instead_of_scoring_empty_answers(evaluations):
    assert not list(evaluations["dirs"]["failing"].rglob("*.json*"))
    assert "`max_new_tokens` must be greater than 0, but is -1" in evaluations["log"]


@pytest.fixture(scope="module")
def own_model_runs(workdir, checkpoints, shapes_eval_dir, tiny_qwen2_5_vl_dir):
    """lmms-eval's own `llava_hf` on a LoRA run merged by `llamafactory-cli export`, and its `qwen2_5_vl` on a
    Qwen2.5-VL checkpoint, each with the README's `--force_simple` -> run name -> output dir."""
    export_config = {
        "model_name_or_path": str(checkpoints["llava_base"]),
        "adapter_name_or_path": str(checkpoints["llava_lora"]),
        "template": "llava",
        "finetuning_type": "lora",
        "export_dir": str(workdir / "llava_merged"),
    }
    (workdir / "export.yaml").write_text(yaml.safe_dump(export_config))
    export = run_cli([str(BIN / "llamafactory-cli"), "export", "export.yaml"], workdir)
    assert export.returncode == 0, export.stderr[-3000:]
    runs = {
        "llava_hf": f"pretrained={workdir / 'llava_merged'},device=cpu,device_map=cpu",
        "qwen2_5_vl": f"pretrained={tiny_qwen2_5_vl_dir},device=cpu,device_map=cpu",
    }
    # Both in one lmms-eval process (its start is most of a tiny evaluation): each run's model from the --config
    # list, the README's flags on the command line, which lmms-eval applies to every run of the list.
    configs = [
        {"model": model, "model_args": model_args, "output_path": f"out/{model}"} for model, model_args in runs.items()
    ]
    (workdir / "own_models.yaml").write_text(yaml.safe_dump(configs))
    result = run_cli(
        [
            str(BIN / "lmms-eval"),
            "--config",
            "own_models.yaml",
            "--force_simple",
            "--tasks",
            "shapes_caption",
            "--gen_kwargs",
            f"max_new_tokens={MAX_NEW_TOKENS}",
            "--log_samples",
        ],
        workdir,
        UE_DPO_SHAPES_EVAL_DIR=str(shapes_eval_dir),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return {model: workdir / "out" / model for model in runs}


@pytest.mark.parametrize("model", ["llava_hf", "qwen2_5_vl"])
def test_lmms_evals_own_models_score_our_tasks_on_merged_checkpoints(model, own_model_runs, shapes_eval_dir):
    samples = logged_samples(own_model_runs[model])
    manifest = json.loads((shapes_eval_dir / EVAL_MANIFEST).read_text())
    assert [sample["doc_id"] for sample in samples] == list(range(EVAL_IMAGES))
    responses = [response_of(sample) for sample in samples]
    assert all(response.strip() for response in responses)  # llava_hf answers "" on a generation error
    expected = naive_shapes_chair(responses, [manifest[sample["doc_id"]]["shapes"] for sample in samples])
    scored = results_of(own_model_runs[model])["shapes_caption"]
    for metric in SHAPES_METRICS:
        assert scored[f"{metric},none"] == (None if expected[metric] is None else pytest.approx(expected[metric]))


def ue_dpo_score(argv: list[str], capsys) -> dict:
    capsys.readouterr()
    ue_dpo_main(["score", *argv, "--json"])
    return json.loads(capsys.readouterr().out)


def test_object_halbench_metrics_equal_ue_dpo_score_on_the_logged_answers(
    evaluations, benchmark_env, workdir, capsys, monkeypatch
):
    samples = logged_samples(evaluations["dirs"]["qwen2_vl_base"], "object_halbench")
    answers = workdir / "object_halbench_answers.jsonl"
    answers.write_text(
        "".join(
            json.dumps({"question_id": sample["doc_id"], "image_id": sample["target"], "text": response_of(sample)})
            + "\n"
            for sample in samples
        )
    )
    monkeypatch.setenv("UE_DPO_CACHE_DIR", benchmark_env["UE_DPO_CACHE_DIR"])
    expected = ue_dpo_score(
        [
            "object_halbench",
            "--coco-dir",
            f"{benchmark_env['UE_DPO_OBJECT_HALBENCH_DIR']}/annotations",
            "--responses",
            str(answers),
        ],
        capsys,
    )
    scored = results_of(evaluations["dirs"]["qwen2_vl_base"])["object_halbench"]
    assert expected["n"] == len(samples) == 6
    for metric in ("chair_s", "chair_s_all", "chair_i", "recall"):
        assert scored[f"{metric},none"] == expected[metric], metric


def test_amber_metrics_equal_ue_dpo_score_on_the_logged_answers(evaluations, benchmark_env, workdir, capsys):
    output_dir = evaluations["dirs"]["qwen2_vl_base"]
    responses = [
        {"id": sample["target"], "response": response_of(sample)}
        for task in ("amber_generative", "amber_discriminative")
        for sample in logged_samples(output_dir, task)
    ]
    (workdir / "amber_responses.json").write_text(json.dumps(responses))
    expected = ue_dpo_score(
        [
            "amber",
            "--data-dir",
            benchmark_env["UE_DPO_AMBER_DIR"],
            "--responses",
            str(workdir / "amber_responses.json"),
            "--spacy-model",
            benchmark_env["UE_DPO_AMBER_SPACY_MODEL"],
        ],
        capsys,
    )
    results = results_of(output_dir)
    generative, discriminative = results["amber_generative"], results["amber_discriminative"]
    for metric in ("CHAIR", "Cover", "Hal", "Cog"):
        assert generative[f"{metric.lower()},none"] == expected["generative"][metric], metric
    for metric in ("Accuracy", "Precision", "Recall", "F1"):
        assert discriminative[f"{metric.lower()},none"] == expected["discriminative"]["overall"][metric], metric
    assert results["amber"]["amber_score,none"] == expected["amber_score"]


def test_mmhal_metrics_equal_ue_dpo_score_on_the_logged_answers(
    evaluations, benchmark_env, workdir, capsys, monkeypatch, judge_server
):
    assert evaluations["judge_requests"] == MMHAL_ITEMS
    template = json.loads((Path(benchmark_env["UE_DPO_MMHAL_DIR"]) / "response_template.json").read_text())
    for sample in logged_samples(evaluations["dirs"]["qwen2_vl_base"], "mmhal_bench"):
        template[sample["doc_id"]]["model_answer"] = response_of(sample)
    (workdir / "mmhal_answers.json").write_text(json.dumps(template))
    for name in ("UE_DPO_JUDGE_CACHE_DIR", "OPENAI_API_KEY", "UE_DPO_JUDGE_MAX_RETRIES"):
        monkeypatch.setenv(name, benchmark_env[name])
    expected = ue_dpo_score(
        [
            "mmhal_bench",
            "--responses",
            str(workdir / "mmhal_answers.json"),
            "--allow-subset",
            "--judge-model",
            JUDGE_MODEL,
            "--judge-base-url",
            judge_server.base_url,
            "--judge-unparsed-as-zero",
        ],
        capsys,
    )
    # the same prompts: every rating comes from the judge cache the lmms-eval run filled, but for the unparsed
    # reply (item 7, type `other`), which is never cached and so asked again
    assert judge_server.request_count == MMHAL_ITEMS + 1
    scored = results_of(evaluations["dirs"]["qwen2_vl_base"])["mmhal_bench"]
    for metric in ("score", "hallucination_rate", "informativeness"):
        assert scored[f"{metric},none"] == pytest.approx(expected[metric]), metric
    for question_type, score in expected["per_type"].items():
        assert scored[f"score_{question_type},none"] == pytest.approx(score), question_type
