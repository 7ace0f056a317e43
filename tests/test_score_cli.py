"""`ue-dpo score amber|object_halbench|mmhal_bench` in a subprocess, on official-format fixtures, with the
numbers worked out by hand in tests/test_{amber,object_halbench,mmhal}.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark_fixtures import (
    RESPONSES,
    RULE_ANSWERS,
    judge_by_type,
    write_amber_data_dir,
    write_coco_files,
    write_mmhal_responses,
)
from judge_server import ScriptedHTTPError, ScriptedJudgeServer, unused_loopback_url
from nlp_resources import install_test_resources

UE_DPO = Path(sys.executable).with_name("ue-dpo")


@pytest.fixture(scope="module")
def nlp_resources():
    return install_test_resources()


@pytest.fixture
def run(tmp_path, nlp_resources):
    """Run `ue-dpo score ...`; NLTK finds the test data through NLTK_DATA, as a user's install would."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("UE_DPO_") and name not in ("OPENAI_BASE_URL", "OPENAI_API_URL", "OPENAI_API_KEY")
    }
    environment.update(
        NLTK_DATA=str(nlp_resources.nltk_dir), UE_DPO_NLTK_DOWNLOAD="0", UE_DPO_CACHE_DIR=str(tmp_path / "cache")
    )

    def run_score(*args: str, **extra_env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(UE_DPO), "score", *args], capture_output=True, text=True, env={**environment, **extra_env}, timeout=120
        )

    return run_score


def json_output(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.strip().splitlines()
    return json.loads(line)


@pytest.fixture
def amber_files(tmp_path):
    data_dir = write_amber_data_dir(tmp_path / "data")
    responses = tmp_path / "responses.json"
    responses.write_text(json.dumps(RESPONSES), encoding="utf-8")
    return data_dir, responses


def test_score_amber_json(run, amber_files, nlp_resources):
    data_dir, responses = amber_files
    spacy_model = str(nlp_resources.spacy_pipeline)
    result = json_output(
        run("amber", "--data-dir", str(data_dir), "--responses", str(responses), "--spacy-model", spacy_model, "--json")
    )
    # tests/test_amber.py::test_score_exact_parse: the empty response of item 4 is scored as the official code does
    assert result["generative"] == {
        "CHAIR": 27.3,
        "Cover": 85.7,
        "Hal": 60.0,
        "Cog": 42.9,
        "n": 5,
        "missing": 1,
        "empty": 1,
    }
    overall = result["discriminative"]["overall"]
    assert (overall["Accuracy"], overall["Precision"], overall["Recall"], overall["F1"]) == (50.0, 50.0, 60.0, 54.5)
    existence = result["discriminative"]["existence"]
    assert (existence["Accuracy"], existence["Precision"], existence["Recall"], existence["F1"]) == (
        40.0,
        33.3,
        50.0,
        39.9,
    )
    assert (result["discriminative"]["attribute"]["F1"], result["discriminative"]["relation"]["F1"]) == (66.5, 66.6)
    assert (result["amber_score"], result["parse"]) == (63.6, "exact")


def test_score_amber_says_that_empty_responses_were_scored(run, amber_files, nlp_resources):
    data_dir, responses = amber_files
    result = run(
        "amber",
        "--data-dir",
        str(data_dir),
        "--responses",
        str(responses),
        "--spacy-model",
        str(nlp_resources.spacy_pipeline),
    )
    assert result.returncode == 0, result.stderr
    assert (
        "ue-dpo score amber: note: 1 response is empty; AMBER's code scores an empty caption as one with no objects"
        in result.stderr
    )
    assert dict(line.rsplit(None, 1) for line in result.stdout.strip().splitlines())["empty responses"] == "1"


def test_score_amber_table_with_the_lenient_parse(run, amber_files, nlp_resources):
    data_dir, responses = amber_files
    result = run(
        "amber",
        "--data-dir",
        str(data_dir),
        "--responses",
        str(responses),
        "--spacy-model",
        str(nlp_resources.spacy_pipeline),
        "--answer-parse",
        "lenient",
    )
    assert result.returncode == 0, result.stderr
    lines = dict(line.rsplit(None, 1) for line in result.stdout.strip().splitlines())
    # tests/test_amber.py::test_score_lenient_parse: overall F1 66.6, AMBER Score (100 - 27.3 + 66.6) / 2
    assert lines["AMBER Score"] == "69.65" and lines["generative CHAIR"] == "27.30" and lines["overall F1"] == "66.60"
    assert lines["unparsed answers"] == "0" and lines["answer parse"] == "lenient"


def test_score_amber_names_a_missing_data_file(run, tmp_path):
    data_dir = write_amber_data_dir(tmp_path / "data", skip=("relation.json",))
    (tmp_path / "responses.json").write_text("[]", encoding="utf-8")
    result = run("amber", "--data-dir", str(data_dir), "--responses", str(tmp_path / "responses.json"), "--json")
    assert result.returncode == 2 and result.stdout == ""
    assert (
        "ue-dpo score amber: error: AMBER file 'relation.json' not found" in result.stderr
        and "AMBER repository" in result.stderr
    )


def test_score_amber_names_a_responses_file_that_is_not_json(run, tmp_path):
    data_dir = write_amber_data_dir(tmp_path / "data")
    responses = tmp_path / "responses.json"
    responses.write_text("id,response\n1,A dog.\n", encoding="utf-8")
    result = run("amber", "--data-dir", str(data_dir), "--responses", str(responses))
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()  # the message alone, no traceback
    assert line.startswith(f"ue-dpo score amber: error: AMBER responses file {str(responses)!r} is not UTF-8 JSON")
    assert "a JSON list of {'id', 'response'} objects" in line


def test_score_object_halbench_json_and_cached_ground_truth(run, tmp_path):
    coco_dir = write_coco_files(tmp_path / "annotations")
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps(answer) + "\n" for answer in RULE_ANSWERS), encoding="utf-8")
    done = run("object_halbench", "--coco-dir", str(coco_dir), "--responses", str(answers), "--json")
    result = json_output(done)
    assert (
        "ue-dpo score object_halbench: note: 1 response is empty; the official code scores an empty answer"
        in done.stderr
    )
    # tests/test_object_halbench.py::test_rule_path_scores
    assert (result["chair_s"], result["chair_s_all"]) == (75.0, 50.0)
    assert result["chair_i"] == pytest.approx(100 / 3) and result["recall"] == pytest.approx(500 / 13)
    assert (result["n"], result["missing"], result["empty"], result["extraction_failures"], result["extractor"]) == (
        6,
        1,
        1,
        0,
        "nltk",
    )
    (cached,) = (tmp_path / "cache" / "object_halbench" / "coco_ground_truth").glob("*.json")
    assert json.loads(cached.read_text())["ground_truth"]["4"] == ["dining table", "wine glass"]

    (coco_dir / "instances_val2014.json").unlink()
    missing = run("object_halbench", "--coco-dir", str(coco_dir), "--responses", str(answers))
    assert missing.returncode == 2
    assert "instances_val2014.json not found" in missing.stderr and "annotations_trainval2014.zip" in missing.stderr


def test_score_mmhal_bench_json_with_a_local_judge_and_its_cache(run, tmp_path):
    responses = tmp_path / "responses.json"
    write_mmhal_responses(responses)
    arguments = [
        "mmhal_bench",
        "--responses",
        str(responses),
        "--judge-model",
        "judge-x",
        "--judge-cache-dir",
        str(tmp_path / "judge"),
        "--judge-max-retries",
        "0",
        "--judge-unparsed-as-zero",
        "--json",
    ]
    with ScriptedJudgeServer(judge_by_type) as server:
        first = json_output(run(*arguments, OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY="sk-test-secret-key"))
        again = run(*arguments, OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY="sk-test-secret-key")
        # the second run is answered from the cache, but for the 12 unparsed replies, which are never cached
        assert server.request_count == 96 + 12
        assert server.authorization_headers[0] == "Bearer sk-test-secret-key"
    # tests/test_mmhal.py::test_score_mmhal_file_end_to_end_and_rescoring_from_cache
    assert first["score"] == pytest.approx(2.625) and first["hallucination_rate"] == pytest.approx(0.5)
    assert first["informativeness"] == pytest.approx(37.5)
    assert list(first["per_type"].values()) == [6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0, 0.0]
    assert (first["n"], first["judge_model"], first["judge_failures"], first["judge_unparsed"]) == (
        96,
        "judge-x",
        0,
        12,
    )
    assert first["judge"]["base_url"] == server.base_url
    assert json_output(again) == first and "sk-test-secret-key" not in again.stdout


def test_score_mmhal_bench_fails_on_unparsed_replies_unless_asked_to_score_them_as_the_official_script(run, tmp_path):
    responses = tmp_path / "responses.json"
    write_mmhal_responses(responses, count=16)
    arguments = [
        "mmhal_bench",
        "--responses",
        str(responses),
        "--judge-model",
        "j",
        "--judge-cache-dir",
        str(tmp_path / "judge"),
        "--judge-max-retries",
        "1",
        "--allow-subset",
        "--json",
    ]
    with ScriptedJudgeServer(judge_by_type) as server:
        refused = run(*arguments, OPENAI_BASE_URL=server.base_url)
        assert server.request_count == 14 + 2 * 2  # items 7 and 15 ("Rating:4") were asked twice
        scored = run(*arguments, "--judge-unparsed-as-zero", OPENAI_BASE_URL=server.base_url)
    assert refused.returncode == 2 and refused.stdout == "" and "Traceback" not in refused.stderr
    # a warning per item, as the official script prints one, then the error
    assert refused.stderr.count("multiple or zero scores found") == 2 and "item 15 (image_id img15)" in refused.stderr
    message = refused.stderr.strip().splitlines()[-1]
    assert message.startswith(
        "ue-dpo score mmhal_bench: error: MMHal-Bench: 2 judge replies name zero or several "
        "ratings (item 7 (image_id img7), item 15 (image_id img15))"
    )
    assert message.endswith(
        "or pass --judge-unparsed-as-zero to score them 0 as the official script does (counted as judge_unparsed)."
    )
    result = json_output(scored)
    assert (result["n"], result["judge_unparsed"], result["per_type"]["other"]) == (16, 2, 0.0)
    assert scored.stderr.count("scored 0, as the official script does") == 2


def test_score_mmhal_bench_needs_a_judge_model_and_all_items(run, tmp_path):
    responses = tmp_path / "responses.json"
    write_mmhal_responses(responses, count=8)
    no_model = run("mmhal_bench", "--responses", str(responses))
    assert no_model.returncode == 2 and "--judge-model" in no_model.stderr
    subset = run(
        "mmhal_bench", "--responses", str(responses), "--judge-model", "j", "--judge-base-url", "http://127.0.0.1:9/v1"
    )
    assert subset.returncode == 2
    assert (
        f"error: MMHal-Bench responses file {responses} has 8 items, expected 96; answer every item, or pass "
        "--allow-subset"
    ) in subset.stderr
    assert "expected_items" not in subset.stderr


def test_score_mmhal_bench_scores_a_subset_with_allow_subset_and_counts_empty_answers(run, tmp_path):
    responses = tmp_path / "responses.json"
    items = write_mmhal_responses(responses, count=8)
    items[0]["model_answer"] = ""  # judged like any other answer, as the official script does
    responses.write_text(json.dumps(items), encoding="utf-8")
    with ScriptedJudgeServer(judge_by_type) as server:
        result = run(
            "mmhal_bench",
            "--responses",
            str(responses),
            "--judge-model",
            "j",
            "--judge-base-url",
            server.base_url,
            "--judge-cache-dir",
            str(tmp_path / "judge"),
            "--allow-subset",
            "--json",
            "--judge-max-retries",
            "0",
            "--judge-unparsed-as-zero",
        )
        assert server.request_count == 8
    scored = json_output(result)
    # One item per type, rated 6, 5, 4, 3, 2, 1, 0, 0 (benchmark_fixtures.REPLY_BY_TYPE): 21 / 8.
    assert (scored["n"], scored["score"], scored["empty"]) == (8, pytest.approx(21 / 8), 1)
    assert (
        "ue-dpo score mmhal_bench: note: 1 response is empty; the official script sends empty answers to the judge"
        in result.stderr
    )


def test_judge_errors_name_the_flags_that_fix_them(run, tmp_path):
    responses = tmp_path / "responses.json"
    write_mmhal_responses(responses, count=1)
    result = run(
        "mmhal_bench",
        "--responses",
        str(responses),
        "--judge-model",
        "j",
        "--judge-base-url",
        unused_loopback_url(),
        "--judge-cache-dir",
        str(tmp_path / "judge"),
        "--judge-max-retries",
        "0",
        "--judge-timeout",
        "5",
        "--allow-subset",
    )
    assert result.returncode == 2 and result.stdout == ""
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("ue-dpo score mmhal_bench: error: LLM judge at ") and "after 1 attempt:" in message
    assert message.endswith(
        "raise --judge-max-retries or --judge-timeout, or use --allow-judge-failures to count them instead "
        "(failed items are then left out of the scores and reported as judge_failures)."
    )
    assert "`max_retries`" not in result.stderr and "Traceback" not in result.stderr

    with ScriptedJudgeServer(lambda payload: ScriptedHTTPError(404)) as server:
        wrong_url = run(
            "mmhal_bench",
            "--responses",
            str(responses),
            "--judge-model",
            "j",
            "--judge-base-url",
            server.base_url,
            "--judge-cache-dir",
            str(tmp_path / "judge"),
            "--allow-subset",
        )
    assert wrong_url.returncode == 2
    assert (
        wrong_url.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "Fix: the endpoint or model was not found; check --judge-base-url (it should end in /v1) and --judge-model."
        )
    )
