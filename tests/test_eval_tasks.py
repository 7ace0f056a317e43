"""The lmms-eval tasks object_halbench, mmhal_bench, amber_generative, amber_discriminative and the group amber:
discovery without --include_path, data loading from official-format fixtures, and process_results +
aggregation giving the numbers worked out by hand in tests/test_{amber,object_halbench,mmhal}.py."""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lmms_eval
import pytest
from lmms_eval.tasks import TaskManager

from benchmark_fixtures import (
    GROUND_TRUTH,
    MMHAL_QUESTION_TYPES,
    RESPONSES,
    RULE_ANSWERS,
    fixture_color,
    judge_by_type,
    write_amber_data_dir,
    write_amber_images,
    write_coco_files,
    write_mmhal_dir,
    write_object_halbench_questions,
)
from judge_server import ScriptedJudgeServer
from nlp_resources import install_test_resources
from ue_dpo.benchmarks.mmhal import mmhal_judge_messages
from ue_dpo.evaluation import coco_ground_truth, discovery
from ue_dpo.evaluation.amber import amber_score_from_terms
from ue_dpo.evaluation.data import BenchmarkDataError

REPO = Path(__file__).resolve().parents[1]
OUR_TASKS = ("object_halbench", "mmhal_bench", "amber_generative", "amber_discriminative")
GENERATION_DEFAULTS = {"max_new_tokens": 1024, "do_sample": False, "temperature": 0, "num_beams": 1, "until": []}


@pytest.fixture(scope="module")
def nlp_resources():
    return install_test_resources()


@pytest.fixture
def env(monkeypatch, tmp_path):
    """No configured benchmark folder or judge from the caller's environment; a private cache."""
    for name in list(os.environ):
        if name.startswith("UE_DPO_") or name in ("OPENAI_BASE_URL", "OPENAI_API_URL", "OPENAI_API_KEY"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("UE_DPO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("UE_DPO_NLTK_DOWNLOAD", "0")
    return monkeypatch


def task_manager(**kwargs) -> TaskManager:
    return TaskManager("ERROR", include_defaults=False, **kwargs)


def load_task(name: str):
    return task_manager().load_task_or_group([name])[name]


def shows_fixture_image(image, index) -> bool:
    """The solid colour of fixture image `index`, up to JPEG rounding."""
    pixel = image.getpixel((image.width // 2, image.height // 2))
    return (
        image.size == (24, 16)
        and max(abs(got - want) for got, want in zip(pixel, fixture_color(index), strict=True)) <= 3
    )


def run_process_results(task, answers_by_position):
    """process_results from 4 threads, as lmms-eval runs it, on the docs lmms-eval passes (images removed)."""
    docs = task.dataset_no_image[task.config.test_split]

    def process(position):
        return task.process_results(docs[position], [answers_by_position[position]])

    with ThreadPoolExecutor(max_workers=4) as pool:
        per_doc = list(pool.map(process, sorted(answers_by_position)))
    return {
        metric: aggregate([metrics[metric] for metrics in per_doc]) for metric, aggregate in task.aggregation().items()
    }


# ---- discovery -------------------------------------------------------------------------------


def test_task_manager_finds_our_tasks_without_include_path():
    index = task_manager().task_index
    ours = discovery.task_dir()
    for name in (*OUR_TASKS, "amber"):
        assert Path(index[name]["yaml_path"]).parent == ours, name
    assert index["amber"]["type"] == "group"
    assert ours == REPO / "eval_tasks"  # editable install: the checkout's folder


def test_include_path_to_our_folder_still_works_and_indexes_it_once(tmp_path):
    with_path = task_manager(include_path=str(REPO / "eval_tasks")).task_index
    assert with_path == task_manager().task_index
    # Another include path is kept, and our folder is added after it.
    (tmp_path / "mine.yaml").write_text("task: my_task\ndataset_path: json\noutput_type: generate_until\n")
    index = task_manager(include_path=[str(tmp_path)]).task_index
    assert "my_task" in index and "object_halbench" in index


def test_no_builtin_lmms_eval_task_uses_our_names():
    # Built-in names silently win over included ones, so none may be ours.
    builtin = Path(lmms_eval.__file__).parent / "tasks"
    declared = set()
    for yaml_path in builtin.rglob("*.yaml"):
        text = yaml_path.read_text(encoding="utf-8", errors="replace")
        declared.update(re.findall(r"^\s*-?\s*(?:task|group|tag)\s*:\s*['\"]?([\w\-]+)", text, flags=re.M))
        declared.update(
            re.findall(r"^\s*-\s*['\"]?([\w\-]+)['\"]?\s*$", text, flags=re.M)
        )  # list items under tag:/task:
    assert "amber_g" in declared and "coco_cap_chair" in declared  # the scan sees the built-in neighbours
    assert declared.isdisjoint({*OUR_TASKS, "amber", "shapes_caption", "shapes_blind_spots"})


# ---- AMBER -----------------------------------------------------------------------------------


@pytest.fixture
def amber_env(env, tmp_path, nlp_resources):
    env.setenv("UE_DPO_AMBER_DIR", str(write_amber_data_dir(tmp_path / "amber" / "data")))
    env.setenv("UE_DPO_AMBER_IMAGE_DIR", str(write_amber_images(tmp_path / "amber" / "images")))
    env.setenv("UE_DPO_AMBER_SPACY_MODEL", str(nlp_resources.spacy_pipeline))
    return env


def answers_by_position(task, key):
    responses = {item["id"]: item["response"] for item in RESPONSES if item["response"] is not None}
    docs = task.dataset_no_image[task.config.test_split]
    return {position: responses[doc[key]] for position, doc in enumerate(docs) if doc[key] in responses}


def test_amber_group_loads_both_tasks_with_official_prompts_and_images(amber_env):
    ((group, tasks),) = task_manager().load_task_or_group(["amber"]).items()
    assert group.group_name == "amber"
    generative, discriminative = tasks["amber_generative"], tasks["amber_discriminative"]
    docs = generative.test_docs()
    assert [doc["id"] for doc in docs] == [1, 2, 3, 4, 5, 18]
    assert [doc["id"] for doc in discriminative.test_docs()] == [6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 19]
    assert generative.doc_to_text(docs[0]) == "Describe this image."
    assert discriminative.doc_to_text(discriminative.test_docs()[0]) == "Is there a thing number 6 in this image?"
    (image,) = generative.doc_to_visual(docs[2])
    assert image.size == (24, 16) and image.mode == "RGB"
    assert shows_fixture_image(image, 3)
    for task in (generative, discriminative):
        assert {key: task.config.generation_kwargs[key] for key in GENERATION_DEFAULTS} == GENERATION_DEFAULTS
        assert task.config.metadata["answer_parse"] == "exact"
        for aggregate in task.aggregation().values():
            assert "amber_" not in aggregate.__name__ and "coco_cap_chair" not in aggregate.__name__


def test_amber_process_results_and_aggregation_match_the_official_numbers(amber_env):
    tasks = task_manager().load_task_or_group(["amber_generative", "amber_discriminative"])
    generative = run_process_results(tasks["amber_generative"], answers_by_position(tasks["amber_generative"], "id"))
    discriminative = run_process_results(
        tasks["amber_discriminative"], answers_by_position(tasks["amber_discriminative"], "id")
    )
    # tests/test_amber.py::test_score_exact_parse
    assert generative == {"chair": 27.3, "cover": 85.7, "hal": 60.0, "cog": 42.9, "amber_score": pytest.approx(72.7)}
    assert discriminative == {
        "accuracy": 50.0,
        "precision": 50.0,
        "recall": 60.0,
        "f1": 54.5,
        "existence_accuracy": 40.0,
        "existence_precision": 33.3,
        "existence_recall": 50.0,
        "existence_f1": 39.9,
        "attribute_accuracy": 50.0,
        "attribute_precision": 99.7,
        "attribute_recall": 49.9,
        "attribute_f1": 66.5,
        "relation_accuracy": 66.6,
        "relation_precision": 50.0,
        "relation_recall": 99.9,
        "relation_f1": 66.6,
        "unparsed": 2,
        "amber_score": 54.5,
    }
    # The group's AMBER Score: (100 - 27.3 + 54.5) / 2
    assert amber_score_from_terms([generative["amber_score"], discriminative["amber_score"]], [5, 12], False) == 63.6
    with pytest.raises(ValueError, match="needs both amber_generative and amber_discriminative"):
        amber_score_from_terms([72.7], [5], False)


def test_amber_lenient_parse_is_a_setting(amber_env):
    amber_env.setenv("UE_DPO_AMBER_ANSWER_PARSE", "lenient")
    task = load_task("amber_discriminative")
    assert task.config.metadata["answer_parse"] == "lenient"
    metrics = run_process_results(task, answers_by_position(task, "id"))
    # tests/test_amber.py::test_score_lenient_parse
    assert (metrics["accuracy"], metrics["precision"], metrics["recall"], metrics["f1"], metrics["unparsed"]) == (
        66.7,
        57.1,
        80.0,
        66.6,
        0,
    )
    amber_env.setenv("UE_DPO_AMBER_ANSWER_PARSE", "fuzzy")
    with pytest.raises(ValueError, match="UE_DPO_AMBER_ANSWER_PARSE.*exact"):
        load_task("amber_discriminative")


def test_amber_missing_image_and_offline_without_data_are_named(amber_env, tmp_path):
    (tmp_path / "amber" / "images" / "AMBER_3.jpg").unlink()
    with pytest.raises(
        BenchmarkDataError, match=r"AMBER_3\.jpg does not exist.*drive\.google\.com.*UE_DPO_AMBER_IMAGE_DIR"
    ):
        load_task("amber_generative")
    amber_env.delenv("UE_DPO_AMBER_DIR")
    amber_env.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        BenchmarkDataError,
        match=r"annotations\.json is not available locally and HF_HUB_OFFLINE is set.*UE_DPO_AMBER_DIR",
    ):
        load_task("amber_generative")


def test_a_truncated_amber_image_stops_the_task_although_lmms_eval_turned_on_truncated_loading(amber_env, tmp_path):
    from PIL import Image, ImageFile

    task = load_task("amber_generative")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # importing lmms-eval did this
    image = tmp_path / "amber" / "images" / "AMBER_3.jpg"
    image.write_bytes(image.read_bytes()[:-8])  # the end of the scan data and the end-of-image marker
    Image.open(image).load()  # what lmms-eval's setting lets through: the missing part filled in
    with pytest.raises(
        BenchmarkDataError,
        match=rf"AMBER image of query 3 \({image}\) cannot be read: image file is "
        r"truncated.*Replace it with a complete copy.*UE_DPO_AMBER_IMAGE_DIR",
    ):
        task.doc_to_visual(task.test_docs()[2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True
    (intact,) = task.doc_to_visual(task.test_docs()[1])
    assert shows_fixture_image(intact, 2)


# ---- Object-HalBench -------------------------------------------------------------------------


@pytest.fixture
def object_halbench_env(env, tmp_path, nlp_resources):
    data_dir = write_object_halbench_questions(tmp_path / "object_halbench")
    write_coco_files(data_dir / "annotations")
    env.setenv("UE_DPO_OBJECT_HALBENCH_DIR", str(data_dir))
    return data_dir


def test_object_halbench_docs_carry_question_image_and_ground_truth(object_halbench_env):
    task = load_task("object_halbench")
    docs = task.test_docs()
    assert [doc["image_id"] for doc in docs] == [1, 2, 3, 4, 4, 1]
    assert [doc["ground_truth"] for doc in docs] == [sorted(GROUND_TRUTH[doc["image_id"]]) for doc in docs]
    assert task.doc_to_text(docs[1]) == "Describe the image."
    (image,) = task.doc_to_visual(docs[2])
    assert image.size == (24, 16) and shows_fixture_image(image, 3)
    assert {key: task.config.generation_kwargs[key] for key in GENERATION_DEFAULTS} == GENERATION_DEFAULTS
    assert task.config.metadata["extractor"] == "nltk"


def test_object_halbench_process_results_match_the_rule_path_numbers(object_halbench_env):
    task = load_task("object_halbench")
    metrics = run_process_results(task, {position: answer["text"] for position, answer in enumerate(RULE_ANSWERS[:6])})
    # tests/test_object_halbench.py::test_rule_path_scores (the seventh answer there is missing)
    assert metrics == {
        "chair_s": 75.0,
        "chair_s_all": 50.0,
        "chair_i": pytest.approx(100 / 3),
        "recall": pytest.approx(500 / 13),
        "judge_unparsed": 0,
    }
    for aggregate in task.aggregation().values():
        assert "amber_" not in aggregate.__name__ and "coco_cap_chair" not in aggregate.__name__


def test_coco_ground_truth_is_cached_until_an_annotation_file_changes(object_halbench_env, monkeypatch):
    coco_dir = object_halbench_env / "annotations"
    first = coco_ground_truth.cached_coco_ground_truth(coco_dir, [1, 2, 3, 4])
    assert first == GROUND_TRUTH
    (cache_file,) = coco_ground_truth.ground_truth_cache_dir().glob("*.json")

    def no_parsing(*args, **kwargs):
        raise AssertionError("the annotations were parsed again")

    monkeypatch.setattr(coco_ground_truth, "load_coco_ground_truth", no_parsing)
    assert coco_ground_truth.cached_coco_ground_truth(coco_dir, [4, 3, 2, 1]) == GROUND_TRUTH
    stat = (coco_dir / "captions_val2014.json").stat()
    os.utime(coco_dir / "captions_val2014.json", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="parsed again"):
        coco_ground_truth.cached_coco_ground_truth(coco_dir, [1, 2, 3, 4])
    assert cache_file.is_file()


def test_object_halbench_missing_files_are_named(object_halbench_env):
    (object_halbench_env / "annotations" / "captions_val2014.json").unlink()
    with pytest.raises(BenchmarkDataError, match=r"captions_val2014\.json not found.*annotations_trainval2014\.zip"):
        load_task("object_halbench")
    (object_halbench_env / "obj_halbench_300_with_image.jsonl").unlink()
    with pytest.raises(BenchmarkDataError, match=r"obj_halbench_300_with_image\.jsonl does not exist.*RLAIF-V"):
        load_task("object_halbench")


# ---- chat models ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "tasks"),
    [
        ("amber_env", ["amber_generative", "amber_discriminative"]),
        ("object_halbench_env", ["object_halbench"]),
        ("mmhal_env", ["mmhal_bench"]),
    ],
)
def test_every_task_is_a_chat_task_whose_messages_carry_the_training_system_prompt_then_image_then_text(
    request, fixture, tasks
):
    from lmms_eval.api.task import ConfigurableMessagesTask

    request.getfixturevalue(fixture)
    environment = request.getfixturevalue("env")  # the monkeypatch the task's fixture set its folders with
    environment.setenv("UE_DPO_JUDGE_MODEL", "judge-x")
    environment.setenv("UE_DPO_TEMPLATE", "llava")
    environment.setenv("UE_DPO_DEFAULT_SYSTEM", "Answer briefly.")
    chat = task_manager().load_task_or_group(tasks, task_type="chat")
    simple = task_manager().load_task_or_group(tasks)
    for name in tasks:
        task = chat[name]
        assert isinstance(task, ConfigurableMessagesTask) and not isinstance(simple[name], ConfigurableMessagesTask)
        doc = task.test_docs()[0]
        request_instance = task.construct_requests(
            0, "", metadata={"task": name, "doc_id": 0, "repeats": 1, "split": task.config.test_split}
        )
        assert request_instance.args[1] == task.doc_to_messages  # what a chat model calls
        system, user = task.doc_to_messages(doc)
        assert system == {"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]}
        (image,) = simple[name].doc_to_visual(doc)
        assert user["role"] == "user" and [part["type"] for part in user["content"]] == ["image", "text"]
        # the 24 x 16 fixture image enlarged to LLaMA-Factory's 32 x 32 pixels by its rule: each side times
        # sqrt(1024 / 384), rounded down
        assert image.size == (24, 16)
        assert user["content"][0]["url"].tobytes() == image.resize((39, 26)).tobytes()
        assert user["content"][1]["text"] == simple[name].doc_to_text(doc)
    environment.setenv("UE_DPO_IMAGE_MIN_PIXELS", "256")
    task = task_manager().load_task_or_group(tasks[:1], task_type="chat")[tasks[0]]
    (image,) = simple[tasks[0]].doc_to_visual(task.test_docs()[0])
    assert task.doc_to_messages(task.test_docs()[0])[1]["content"][0]["url"].tobytes() == image.tobytes()
    environment.delenv("UE_DPO_DEFAULT_SYSTEM")
    llava_system = task_manager().load_task_or_group(tasks[:1], task_type="chat")[tasks[0]].chat_prompt.system
    assert llava_system.startswith("A chat between a curious user and an artificial intelligence assistant.")


# ---- MMHal-Bench -----------------------------------------------------------------------------


@pytest.fixture
def mmhal_env(env, tmp_path):
    env.setenv("UE_DPO_MMHAL_DIR", str(write_mmhal_dir(tmp_path / "mmhal", count=8)))
    env.setenv("UE_DPO_JUDGE_CACHE_DIR", str(tmp_path / "judge_cache"))
    return env


def test_mmhal_task_judges_with_the_official_prompt_and_records_the_judge(mmhal_env):
    with ScriptedJudgeServer(judge_by_type) as server:
        mmhal_env.setenv("UE_DPO_JUDGE_MODEL", "judge-x")
        mmhal_env.setenv("OPENAI_BASE_URL", server.base_url)
        mmhal_env.setenv("OPENAI_API_KEY", "sk-test-secret-key")
        mmhal_env.setenv("UE_DPO_JUDGE_MAX_RETRIES", "0")
        mmhal_env.setenv("UE_DPO_JUDGE_UNPARSED_AS_ZERO", "1")
        task = load_task("mmhal_bench")
        docs = task.test_docs()
        assert [doc["question_type"] for doc in docs] == list(MMHAL_QUESTION_TYPES)
        assert task.doc_to_text(docs[0]) == "Question 0 of type attribute?"
        (image,) = task.doc_to_visual(docs[5])
        assert shows_fixture_image(image, 5)
        metrics = run_process_results(task, {position: f"  Answer {position}.\n" for position in range(8)})
        assert server.request_count == 8
    # Per type 6, 5, 4, 3, 2, 1, 0, 0 ("Rating:4" is unparsed): tests/test_mmhal.py
    assert metrics["score"] == pytest.approx(2.625)
    assert metrics["hallucination_rate"] == pytest.approx(0.5)
    assert metrics["informativeness"] == pytest.approx(37.5)
    assert [metrics[f"score_{kind}"] for kind in MMHAL_QUESTION_TYPES] == [6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0, 0.0]
    assert (metrics["judge_failures"], metrics["judge_unparsed"]) == (0, 1)
    # lmms-eval strips the answer; the prompt is the official one for the item.
    item = {
        key: docs[0][key]
        for key in ("question_type", "question_topic", "image_id", "image_content", "question", "gt_answer")
    }
    assert mmhal_judge_messages({**item, "model_answer": "Answer 0."}) in [
        payload["messages"] for payload in server.payloads
    ]
    judge = task.config.metadata["judge"]
    assert judge["model"] == "judge-x" and judge["api_key_set"] is True
    assert task.config.metadata["judge_unparsed_as_zero"] is True
    assert "sk-test-secret-key" not in repr(task.dump_config())


def test_mmhal_task_fails_on_unparsed_replies_and_names_the_setting_that_scores_them_zero(mmhal_env):
    with ScriptedJudgeServer(judge_by_type) as server:
        mmhal_env.setenv("UE_DPO_JUDGE_MODEL", "judge-x")
        mmhal_env.setenv("OPENAI_BASE_URL", server.base_url)
        mmhal_env.setenv("UE_DPO_JUDGE_MAX_RETRIES", "1")
        task = load_task("mmhal_bench")
        with pytest.raises(ValueError) as caught:
            run_process_results(task, {position: f"Answer {position}." for position in range(8)})
        assert server.request_count == 7 + 2  # the unparsed reply was asked again
    message = str(caught.value)
    assert "1 judge reply names zero or several ratings (item 7 (image_id img7))" in message
    assert "set UE_DPO_JUDGE_UNPARSED_AS_ZERO=1 to score them 0 as the official script does" in message
    assert task.config.metadata["judge_unparsed_as_zero"] is False


def test_benchmark_files_that_repeat_a_question_are_refused(tmp_path):
    from ue_dpo.evaluation.mmhal_bench import load_mmhal_docs
    from ue_dpo.evaluation.object_halbench import load_object_halbench_docs

    mmhal = write_mmhal_dir(tmp_path / "mmhal", count=6)
    template = json.loads((mmhal / "response_template.json").read_text())
    (mmhal / "response_template.json").write_text(json.dumps([*template, template[1]]))
    with pytest.raises(
        BenchmarkDataError, match=r"response_template.json: MMHal-Bench item 6 \(image_id img1\) repeats item 1"
    ):
        load_mmhal_docs(mmhal)
    questions = write_object_halbench_questions(tmp_path / "object_halbench") / "obj_halbench_300_with_image.jsonl"
    lines = [json.loads(line) for line in questions.read_text().splitlines()]
    numbered = [{**line, "question_id": index % 5} for index, line in enumerate(lines)]
    questions.write_text("".join(json.dumps(line) + "\n" for line in numbered))
    with pytest.raises(
        BenchmarkDataError,
        match=r"obj_halbench_300_with_image.jsonl: question_id 0 appears twice "
        r"\(lines 1 and 6\)",
    ):
        load_object_halbench_docs(questions.parent, tmp_path / "no_coco_needed")


def test_mmhal_task_without_judge_model_or_template_says_what_to_set(mmhal_env, tmp_path):
    with pytest.raises(Exception, match="UE_DPO_JUDGE_MODEL=MODEL"):
        load_task("mmhal_bench")
    mmhal_env.setenv("UE_DPO_JUDGE_MODEL", "judge-x")
    (tmp_path / "mmhal" / "images" / "3.jpg").unlink()
    with pytest.raises(BenchmarkDataError, match=r"images/3\.jpg does not exist.*Shengcao1006/MMHal-Bench"):
        load_task("mmhal_bench")
    mmhal_env.delenv("UE_DPO_MMHAL_DIR")
    mmhal_env.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BenchmarkDataError, match="HF_HUB_OFFLINE is set.*UE_DPO_MMHAL_DIR"):
        load_task("mmhal_bench")
