"""MMHal-Bench: the official template, rating parse and aggregates, and file scoring end to end."""

import hashlib
import json
import logging

import pytest

from benchmark_fixtures import judge_by_type, write_mmhal_responses
from judge_server import ScriptedJudgeServer
from ue_dpo.benchmarks.judge import JudgeClient, JudgeConfig, JudgeResult
from ue_dpo.benchmarks.mmhal import (
    MMHAL_JUDGE_TEMPLATE,
    MMHAL_QUESTION_TYPES,
    mmhal_item_record,
    mmhal_judge_messages,
    mmhal_judge_prompt,
    mmhal_metrics,
    parse_mmhal_rating,
    score_mmhal_file,
)

# sha256 of the `template` string (as Python evaluates the literal, UTF-8 encoded) in
# llava-rlhf/LLaVA-RLHF Eval/eval_gpt_mmhal.py @ 830a083fd83e607da3c35f2e6aef833523c1e722;
# RLHF-V/RLAIF-V eval/eval_gpt_mmhal.py @ 83d917b2e8118ca8e7877a796d72af9bb3e6b356 has the same
# text (same hash). 6631 characters, ending "### LMM Response to Evaluate\n{}\n".
OFFICIAL_TEMPLATE_SHA256 = "2c73d8c50f1740d000fae62cfeed103c2f7a5bcfa904b27e6e09900e7ce600cc"

ITEM = {
    "question_type": "counting",
    "question_topic": "outdoor",
    "image_id": "abc123",
    "image_content": ["Lynx", "Cat"],
    "question": "How many cats are there?",
    "gt_answer": "There are two cats.",
    "model_answer": "There is one cat {and} a {0} brace.",
}


def test_template_is_the_official_text_byte_for_byte():
    assert hashlib.sha256(MMHAL_JUDGE_TEMPLATE.encode("utf-8")).hexdigest() == OFFICIAL_TEMPLATE_SHA256
    assert len(MMHAL_JUDGE_TEMPLATE) == 6631


def test_prompt_fills_the_four_sections():
    prompt = mmhal_judge_prompt(ITEM)
    head = MMHAL_JUDGE_TEMPLATE[: MMHAL_JUDGE_TEMPLATE.index("### Image Contents\n{}")]
    assert prompt == head + (
        "### Image Contents\nLynx, Cat\n\n"
        "### Question\nHow many cats are there?\n\n"
        "### Standard Human-Generated Answer\nThere are two cats.\n\n"
        "### LMM Response to Evaluate\nThere is one cat {and} a {0} brace.\n"
    )
    assert head.endswith("- Rating: 0, not informative, with hallucination\n\n")
    assert mmhal_judge_messages(ITEM) == [{"role": "user", "content": prompt}]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("image_content", "Lynx, Cat", "must be a list of strings"),
        ("image_content", {"class": ["Lynx"]}, "must be a list of strings"),
        ("model_answer", None, "`model_answer` must be a string"),
    ],
)
def test_prompt_rejects_malformed_items(field, value, message):
    with pytest.raises(ValueError, match=message):
        mmhal_judge_prompt({**ITEM, field: value})


def test_prompt_names_a_missing_model_answer():
    item = {key: value for key, value in ITEM.items() if key != "model_answer"}
    with pytest.raises(ValueError, match=r"image_id abc123.*lacks model_answer.*Fill `model_answer`"):
        mmhal_judge_prompt(item)


@pytest.mark.parametrize(
    ("reply", "rating"),
    [
        ("The answer is accurate.\nRating: 3, not informative, no hallucination", 3),
        ("rating: 6", 6),
        ("RATING: 0", 0),
        # No space after the colon: "rating: k" never occurs, so officially unparsed (scored 0).
        ("Rating:3", None),
        # "rating: 1" is a substring of "rating: 10" and "rating: 0" is not: officially 1.
        ("Rating: 10", 1),
        # "rating: 3" is a substring of "rating: 3.5".
        ("Rating: 3.5", 3),
        # Two distinct ratings: unparsed.
        ("Rating: 2 ... on reflection, Rating: 5", None),
        # The same rating twice is one distinct value.
        ("Rating: 4. To repeat, rating: 4.", 4),
        ("I cannot judge this response.", None),
        ("", None),
    ],
)
def test_parse_follows_the_official_substring_rule(reply, rating):
    assert parse_mmhal_rating(reply) == rating


def test_an_unparsed_reply_is_flagged_warned_per_item_and_scored_zero_only_when_asked(caplog):
    unparsed = JudgeResult(content="Rating:5", judge_model="j", attempts=3, accepted=False)
    record = mmhal_item_record(ITEM, unparsed, index=7)
    assert (record["rating"], record["judge_unparsed"], record["judge_failed"]) == (None, True, False)
    # The official script prints "Warning: multiple or zero scores found", then the item and the reply.
    assert "multiple or zero scores found" in caplog.text and "item 7 (image_id abc123)" in caplog.text
    assert "'Rating:5'" in caplog.text
    official = mmhal_item_record(ITEM, unparsed, unparsed_as_zero=True)
    assert (official["rating"], official["judge_unparsed"], official["judge_failed"]) == (0, True, False)
    failed = mmhal_item_record(ITEM, JudgeResult(content=None, judge_model="j", attempts=3, error="down"))
    assert (failed["rating"], failed["judge_unparsed"], failed["judge_failed"], failed["judge_error"]) == (
        None,
        False,
        True,
        "down",
    )


def test_metrics_refuse_unparsed_replies_unless_scored_as_the_official_script_does():
    records = fixture_records(unparsed_as_zero=False)
    with pytest.raises(ValueError) as caught:
        mmhal_metrics(records, unparsed_fix="pass --judge-unparsed-as-zero")
    message = str(caught.value)
    assert "1 judge reply names zero or several ratings" in message and "item 3 (image_id abc123)" in message
    assert "pass --judge-unparsed-as-zero to score them 0 as the official script does" in message
    assert mmhal_metrics(fixture_records(unparsed_as_zero=True))["judge_unparsed"] == 1


def fixture_records(unparsed_as_zero=True):
    """Ten items over the 8 types: one unparsed reply, one judge failure."""
    replies = [
        ("attribute", "Rating: 6, very informative with good analysis or reasoning, no hallucination"),
        ("adversarial", "Rating: 2"),
        ("comparison", "rating: 4"),
        ("counting", "Rating: 1 or maybe Rating: 0"),  # two ratings -> unparsed -> 0
        ("relation", "Rating: 3"),
        ("environment", "Rating: 5"),
        ("holistic", "Rating: 1"),
        ("other", "Rating: 4"),
        ("attribute", "Rating: 2"),
        ("adversarial", None),  # judge failed after retries (allow_failures)
    ]
    records = []
    for question_type, reply in replies:
        result = JudgeResult(content=reply, judge_model="judge-x", error=None if reply else "HTTP 500")
        item = {**ITEM, "question_type": question_type}
        records.append(mmhal_item_record(item, result, unparsed_as_zero=unparsed_as_zero))
    return records


def test_metrics_by_hand():
    metrics = mmhal_metrics(fixture_records())
    # Rated items (failure left out): 6, 2, 4, 0, 3, 5, 1, 4, 2 -> n = 9, sum = 27.
    assert metrics["n"] == 9
    assert metrics["score"] == pytest.approx(27 / 9)  # 3.0
    # Ratings < 3: 2, 0, 1, 2 -> 4 of 9.
    assert metrics["hallucination_rate"] == pytest.approx(4 / 9)
    # s >= 3 -> s - 3, else s: 3, 2, 1, 0, 0, 2, 1, 1, 2 -> sum 12; 12 / 9 / 3 * 100 = 44.44...
    assert metrics["informativeness"] == pytest.approx(400 / 9)
    assert metrics["per_type"] == {
        "attribute": pytest.approx(4.0),  # (6 + 2) / 2
        "adversarial": 2.0,  # the failed adversarial item is left out
        "comparison": 4.0,
        "counting": 0.0,
        "relation": 3.0,
        "environment": 5.0,
        "holistic": 1.0,
        "other": 4.0,
    }
    assert list(metrics["per_type"]) == list(MMHAL_QUESTION_TYPES)
    assert (metrics["judge_model"], metrics["judge_failures"], metrics["judge_unparsed"]) == ("judge-x", 1, 1)


def test_empty_answers_are_judged_averaged_and_counted():
    records = fixture_records()
    records[0] = {**records[0], "model_answer": ""}  # rated 6 by the judge, as the official script would ask it
    records[2] = {**records[2], "model_answer": " \n"}
    metrics = mmhal_metrics(records)
    assert metrics["empty"] == 2
    # The same ratings as test_metrics_by_hand: the empty answers stay in every mean.
    assert (metrics["n"], metrics["score"]) == (9, pytest.approx(27 / 9))
    assert mmhal_metrics(fixture_records())["empty"] == 0


def test_metrics_report_missing_types_and_refuse_bad_records():
    only_attribute = mmhal_metrics(fixture_records()[:1])
    assert only_attribute["per_type"]["attribute"] == 6.0 and only_attribute["per_type"]["other"] is None
    all_failed = mmhal_metrics(fixture_records()[-1:])
    assert (all_failed["score"], all_failed["n"], all_failed["judge_failures"]) == (None, 0, 1)
    with pytest.raises(ValueError, match="different models"):
        mmhal_metrics([*fixture_records(), {**fixture_records()[0], "judge_model": "judge-y"}])
    with pytest.raises(ValueError, match=r"record 0.*integer 0\.\.6"):
        mmhal_metrics([{**fixture_records()[0], "rating": 7}])
    with pytest.raises(ValueError, match="No MMHal-Bench records"):
        mmhal_metrics([])


# ---- score_mmhal_file end to end against the loopback judge --------------------------------


def test_score_mmhal_file_fails_on_unparsed_replies_after_asking_again(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    responses = tmp_path / "responses.json"
    write_mmhal_responses(responses)
    with ScriptedJudgeServer(judge_by_type) as server:
        config = JudgeConfig(model="judge-x", base_url=server.base_url, cache_dir=tmp_path / "cache", max_retries=2)
        with pytest.raises(
            ValueError,
            match=r"12 judge replies name zero or several ratings "
            r"\(item 7 \(image_id img7\), item 15 \(image_id img15\), "
            r".*unparsed_as_zero=True to score them 0",
        ):
            score_mmhal_file(responses, JudgeClient(config))
        # The 12 "Rating:4" replies of type `other` were asked 3 times each.
        assert server.request_count == 84 + 12 * 3
    assert caplog.text.count("multiple or zero scores found") == 12


def test_score_mmhal_file_end_to_end_and_rescoring_from_cache(tmp_path):
    responses = tmp_path / "responses.json"
    items = write_mmhal_responses(responses)
    with ScriptedJudgeServer(judge_by_type) as server:
        config = JudgeConfig(model="judge-x", base_url=server.base_url, cache_dir=tmp_path / "cache", max_retries=1)
        scored = score_mmhal_file(responses, JudgeClient(config), unparsed_as_zero=True)
        assert server.request_count == 84 + 12 * 2
        rescored = score_mmhal_file(responses, JudgeClient(config), unparsed_as_zero=True)
        # Only the unparsed replies are asked again: they were not cached.
        assert server.request_count == 84 + 12 * 2 * 2
    # Requests run concurrently, so match item 0's request by content, not position.
    assert {"model": "judge-x", "messages": mmhal_judge_messages(items[0]), "temperature": 0.0} in server.payloads
    metrics = scored["metrics"]
    # Per type 6, 5, 4, 3, 2, 1, 0, 0 (12 items each): score 21 / 8 = 2.625.
    assert metrics["score"] == pytest.approx(2.625)
    # relation, environment, holistic, other are < 3: 48 / 96.
    assert metrics["hallucination_rate"] == pytest.approx(0.5)
    # 3 + 2 + 1 + 0 + 2 + 1 + 0 + 0 = 9 per 8 items -> 1.125 / 3 * 100 = 37.5.
    assert metrics["informativeness"] == pytest.approx(37.5)
    assert metrics["per_type"] == dict(zip(MMHAL_QUESTION_TYPES, [6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0, 0.0]))
    assert (metrics["n"], metrics["judge_model"], metrics["judge_failures"], metrics["judge_unparsed"]) == (
        96,
        "judge-x",
        0,
        12,
    )
    assert scored["items"][7]["judge_reply"] == "Rating:4" and scored["items"][7]["judge_unparsed"] is True
    assert rescored["metrics"] == metrics
    assert [record["judge_cached"] for record in rescored["items"]] == [index % 8 != 7 for index in range(96)]
    assert "api_key" not in scored["judge"]


def test_score_mmhal_file_counts_judge_failures_when_allowed(tmp_path):
    responses = tmp_path / "responses.json"
    write_mmhal_responses(responses, count=8)
    with ScriptedJudgeServer(judge_by_type, fail_first=2) as server:
        config = JudgeConfig(model="j", base_url=server.base_url, max_retries=0, allow_failures=True, concurrency=1)
        scored = score_mmhal_file(responses, JudgeClient(config), expected_items=None, unparsed_as_zero=True)
    metrics = scored["metrics"]
    # With one worker, the first two items (attribute, adversarial) hit the outage.
    assert (metrics["n"], metrics["judge_failures"]) == (6, 2)
    # Remaining ratings 4, 3, 2, 1, 0, 0: sum 10 over 6.
    assert metrics["score"] == pytest.approx(10 / 6)
    assert metrics["per_type"]["attribute"] is None


def test_score_mmhal_file_names_the_file_and_the_fix(tmp_path):
    judge = JudgeClient(JudgeConfig(model="j", base_url="http://127.0.0.1:9/v1"))
    missing = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match="nope.json does not exist"):
        score_mmhal_file(missing, judge)
    broken = tmp_path / "broken.json"
    broken.write_text("[{", encoding="utf-8")
    with pytest.raises(ValueError, match="broken.json is not valid UTF-8 JSON"):
        score_mmhal_file(broken, judge)
    short = tmp_path / "short.json"
    write_mmhal_responses(short, count=10)
    with pytest.raises(ValueError, match="short.json has 10 items, expected 96.*expected_items=None"):
        score_mmhal_file(short, judge)
    unanswered = tmp_path / "unanswered.json"
    items = write_mmhal_responses(unanswered)
    del items[5]["model_answer"]
    unanswered.write_text(json.dumps(items), encoding="utf-8")
    with pytest.raises(ValueError, match=r"unanswered.json: MMHal-Bench item 5 \(image_id img5\) lacks model_answer"):
        score_mmhal_file(unanswered, judge)
    template = tmp_path / "template.json"
    template.write_text(
        json.dumps([{**item, "model_answer": ""} for item in write_mmhal_responses(tmp_path / "x.json")]),
        encoding="utf-8",
    )
    with pytest.raises(ValueError, match="unfilled template"):
        score_mmhal_file(template, judge)
    repeated = tmp_path / "repeated.json"
    items = write_mmhal_responses(repeated, count=6)
    repeated.write_text(json.dumps([*items, {**items[2], "model_answer": "Another answer."}]), encoding="utf-8")
    with pytest.raises(
        ValueError,
        match=r"repeated.json: MMHal-Bench item 6 \(image_id img2\) repeats item 2 "
        r"\(the same image_id and question\); score each question once",
    ):
        score_mmhal_file(repeated, judge, expected_items=None)
