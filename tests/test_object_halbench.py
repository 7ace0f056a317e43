"""Object-HalBench scorer against hand-made COCO fixtures in the official file formats.

NLP resources: tests/nlp_resources.py (real-format NLTK punkt_tab and WordNet found through
`nltk.data.path`; a spaCy pipeline on disk, loaded with `spacy.load(path)`, whose attribute_ruler
gives the fixture tokens their Penn tags and lemmas, e.g. "glasses" -> NNS "glass"). The LLM of the
gpt extractor is a scripted object with the judge interface, `complete(messages, *, temperature)`.

Expected numbers are worked out by hand from the official definitions (totals over responses).
"""

from __future__ import annotations

import json
import threading

import pytest

from benchmark_fixtures import (
    CAPTIONS_TRAIN,
    CAPTIONS_VAL,
    GROUND_TRUTH,
    INSTANCES_TRAIN,
    INSTANCES_VAL,
    RULE_ANSWERS,
    write_coco_files,
)
from nlp_resources import install_test_resources
from ue_dpo.benchmarks.coco_vocabulary import (
    COCO_CLASS_SYNONYMS,
    COCO_DOUBLE_WORDS,
    COCO_WORD_TO_CLASS,
)
from ue_dpo.benchmarks.nlp import NLPResourceError
from ue_dpo.benchmarks.object_halbench import (
    OBJECT_EXTRACTION_PROMPT,
    caption_coco_mentions,
    clean_answer_text,
    coco_ground_truth_from_annotations,
    load_coco_ground_truth,
    object_extraction_messages,
    object_halbench_item_result,
    object_halbench_metrics,
    parse_object_list,
    refine_extracted_objects,
    score_object_halbench,
    score_object_halbench_files,
)


@pytest.fixture(scope="module")
def spacy_pipeline():
    return str(install_test_resources().spacy_pipeline)


@pytest.fixture(scope="module", autouse=True)
def nltk_data():
    return install_test_resources().nltk_dir


class ScriptedJudge:
    """The judge interface, answering from a table keyed by the answer text inside the prompt."""

    def __init__(self, replies):
        self.replies = replies
        self.calls = []
        self._lock = threading.Lock()

    def complete(self, messages, *, temperature):
        with self._lock:
            self.calls.append((messages, temperature))
        prompt = messages[0]["content"]
        for answer, reply in self.replies.items():
            if f"[Start of Examiner's Answer]\n\n{answer}\n\n[End of Examiner's Answer]" in prompt:
                return reply
        raise AssertionError(f"unexpected prompt {prompt!r}")


def test_vocabulary_covers_the_80_coco_classes():
    assert len(COCO_CLASS_SYNONYMS) == 80
    assert COCO_WORD_TO_CLASS["puppy"] == "dog" and COCO_WORD_TO_CLASS["coffee table"] == "dining table"
    assert COCO_WORD_TO_CLASS["pedestrian"] == "person" and COCO_WORD_TO_CLASS["remote control"] == "remote"
    assert COCO_DOUBLE_WORDS["baby dog"] == "dog" and COCO_DOUBLE_WORDS["passenger jet"] == "jet"
    assert COCO_DOUBLE_WORDS["bow tie"] == "tie" and COCO_DOUBLE_WORDS["toilet seat"] == "toilet"
    assert COCO_DOUBLE_WORDS["home plate"] == "home plate" and "home plate" not in COCO_WORD_TO_CLASS


def test_clean_answer_removes_every_assistant_prefix():
    assert clean_answer_text("  Assistant: A dog. Assistant: A cat.\n") == "A dog.  A cat."


def test_rule_extractor_mentions():
    # baby dog -> dog (not person), "dogs" -> dog counted again, ball -> sports ball, man -> person.
    assert caption_coco_mentions("A baby dog and two dogs chase a ball near a man.") == [
        ("dog", "dog"),
        ("dog", "dog"),
        ("ball", "sports ball"),
        ("man", "person"),
    ]
    # "seat" is dropped because "toilet" is there; "bow tie" -> tie.
    assert caption_coco_mentions("The toilet has a seat and a bow tie on it.") == [("toilet", "toilet"), ("tie", "tie")]
    # "train tracks" -> "train track", which is no object; the first "train" stays.
    assert caption_coco_mentions("A train on the train tracks.") == [("train", "train")]
    # "wine glasses" -> wine + glass -> "wine glass"; "mice" -> mouse through WordNet's exception list.
    assert caption_coco_mentions("Wine glasses near two mice.") == [("wine glass", "wine glass"), ("mouse", "mouse")]
    # Upper case is lower-cased first; "passenger train" -> train.
    assert caption_coco_mentions("PASSENGER TRAIN") == [("train", "train")]
    assert caption_coco_mentions("") == []


def test_ground_truth_merges_instances_and_captions_of_train_and_val():
    ground_truth = coco_ground_truth_from_annotations(
        [INSTANCES_TRAIN, INSTANCES_VAL], [CAPTIONS_TRAIN, CAPTIONS_VAL], image_ids=[1, 2, 3, 4, 5]
    )
    assert ground_truth == {**GROUND_TRUTH, 5: frozenset()}
    everything = coco_ground_truth_from_annotations([INSTANCES_TRAIN, INSTANCES_VAL], [CAPTIONS_TRAIN, CAPTIONS_VAL])
    assert everything == {**GROUND_TRUTH, 9: frozenset({"dog"})}


def test_rule_path_scores():
    result = score_object_halbench(GROUND_TRUTH, RULE_ANSWERS, extractor="nltk")
    # per answer: mentions / hallucinated / covered classes / ground-truth classes
    # 1: dog, dog, sports ball, person / sports ball / dog, person / 3
    # 2: toilet, tie / tie / toilet / 2
    # 3: train / - / train / 1
    # 4: - / - / - / 2          (no COCO mention)
    # 5: wine glass, teddy bear / teddy bear / wine glass / 2
    # 6: (empty) - / - / - / 3  (no COCO mention)
    # 7: None: missing, not scored
    # chair_s     = hallucinated responses / responses with a mention = 3 / 4 = 75.0
    # chair_s_all = 3 / 6 = 50.0
    # chair_i     = hallucinated mentions / mentions = 3 / (4 + 2 + 1 + 2) = 3 / 9 = 33.33...
    # recall      = covered / ground truth = (2 + 1 + 1 + 0 + 1 + 0) / (3 + 2 + 1 + 2 + 2 + 3) = 5 / 13
    # avg_word_len = (12 + 11 + 6 + 4 + 6 + 1) / 6 = 40 / 6 (the empty answer splits into one "")
    # The empty answer 6 is scored as the official code scores it (in chair_s_all and recall) and counted as empty;
    # left out, chair_s_all would be 3 / 5 = 60.0 and recall 5 / 10 = 50.0.
    assert result == {
        "chair_s": 75.0,
        "chair_s_all": 50.0,
        "chair_i": pytest.approx(100 / 3),
        "recall": pytest.approx(500 / 13),
        "n": 6,
        "coco_responses": 4,
        "hallucinated_responses": 3,
        "coco_mentions": 9,
        "hallucinated_mentions": 3,
        "ground_truth_objects": 13,
        "covered_objects": 5,
        "avg_word_len": pytest.approx(40 / 6),
        "missing": 1,
        "empty": 1,
        "extraction_failures": 0,
        "extractor": "nltk",
    }


def test_item_records_aggregate_like_the_whole_run():
    records = [
        object_halbench_item_result(
            answer["text"],
            GROUND_TRUTH[answer["image_id"]],
            image_id=answer["image_id"],
            question_id=answer["question_id"],
        )
        for answer in RULE_ANSWERS
    ]
    assert records[0]["mentions"] == [["dog", "dog"], ["dog", "dog"], ["ball", "sports ball"], ["man", "person"]]
    assert records[0]["hallucinated"] == [["ball", "sports ball"]] and records[0]["covered"] == ["dog", "person"]
    assert records[6]["status"] == "missing"
    whole = score_object_halbench(GROUND_TRUTH, RULE_ANSWERS)
    whole.pop("extractor")
    assert object_halbench_metrics(records) == whole


def test_prompt_is_the_official_text():
    messages = object_extraction_messages("Describe it.", "A dog.")
    assert len(messages) == 1 and messages[0]["role"] == "system"
    prompt = messages[0]["content"]
    assert prompt.startswith("You are an expert in image objects extraction according to a question answer pair.")
    assert "[Start of Question]\n\n<image> Describe it.\n\n[End of Question]" in prompt
    assert (
        "[Start of Examiner's Answer]\n\nA dog.\n\n[End of Examiner's Answer]\n\n\nAssume that the answer is correct"
        in prompt
    )
    assert 'Present the results in a JSON list format: ["object_1", ..., "object_n"].\n' in prompt
    assert prompt.endswith("5. You should return an empty JSON list () if no visible objects can be found.\n")
    assert OBJECT_EXTRACTION_PROMPT.count("{question}") == 1 and OBJECT_EXTRACTION_PROMPT.count("{answer}") == 1


def test_parse_object_list():
    assert parse_object_list('["dog", "cat"]') == ["dog", "cat"]
    assert parse_object_list('Objects:\n["dog"]') == ["dog"]  # falls back to the last line when '["' is in the reply
    assert parse_object_list("[]") == []
    for reply in ("()", "dog, cat", '["dog",\n"cat"] done', '{"objects": ["dog"]}'):
        with pytest.raises(ValueError):
            parse_object_list(reply)


def test_refine_extracted_objects(spacy_pipeline):
    # Double words first ("wine glass", "cell phone" from the lemmas), else NN* compounds
    # ("tennis ball" stays one compound), adjectives split compounds, repeats are dropped.
    refined = refine_extracted_objects(
        ["wine glasses", "cell phones", "tennis ball", "puppy", "red kite string", "puppy"], spacy_pipeline
    )
    assert refined == ["wine glass", "cell phone", "tennis ball", "puppy", "kite string"]


GPT_ANSWERS = [
    {
        "question_id": 11,
        "image_id": 1,
        "prompt": "Describe the image.",
        "text": "A playful puppy and a tennis ball are on the grass near a man.",
    },
    {"question_id": 12, "image_id": 2, "prompt": "What is there?", "text": "Yes, a toilet."},
    {
        "question_id": 13,
        "image_id": 4,
        "prompt": "Describe the image.",
        "text": "There are two wine glasses and a cell phone on the table.",
    },
    {
        "question_id": 14,
        "image_id": 3,
        "prompt": "Describe the image.",
        "text": "A long train is waiting at the station platform.",
    },
    {
        "question_id": 15,
        "image_id": 3,
        "prompt": "Describe the image.",
        "text": "Assistant: A dog sits on a toilet seat in the station.",
    },
]
GPT_REPLIES = {
    "A playful puppy and a tennis ball are on the grass near a man.": (
        '["puppy", "tennis ball", "grass", "man", "puppy"]'
    ),
    "There are two wine glasses and a cell phone on the table.": (
        'Here are the objects:\n["wine glasses", "cell phones", "table"]'
    ),
    "A long train is waiting at the station platform.": "The objects are a train and a platform.",
    "A dog sits on a toilet seat in the station.": '["toilet", "seat", "dog"]',
}


def test_gpt_path_scores(spacy_pipeline):
    judge = ScriptedJudge(GPT_REPLIES)
    result = score_object_halbench(
        GROUND_TRUTH, GPT_ANSWERS, extractor="gpt", judge=judge, nlp=spacy_pipeline, max_workers=2
    )
    # 11: objects puppy, tennis ball, grass, man (repeat dropped); vocabulary hits puppy -> dog,
    #     man -> person ("tennis ball" is no vocabulary word, "grass" neither): 2 mentions, 0
    #     hallucinated, covered dog, person of 3.
    # 12: three words: no LLM call, no objects: 0 mentions, ground truth 2.
    # 13: reply parsed from its last line; wine glass, cell phone, table -> dining table:
    #     3 mentions, cell phone hallucinated, covered 2 of 2.
    # 14: reply is not a JSON list: an extraction failure, left out and counted.
    # 15: toilet, seat, dog -> "seat" dropped next to "toilet"; toilet and dog are not in image 3's
    #     {train}: 2 mentions, 2 hallucinated, covered 0 of 1.
    # chair_s = 2 / 3 (11, 13, 15 mention objects; 13, 15 hallucinate); chair_s_all = 2 / 4 = 50.0
    # chair_i = 3 / 7; recall = (2 + 0 + 2 + 0) / (3 + 2 + 2 + 1) = 4 / 8 = 50.0
    assert result["chair_s"] == pytest.approx(200 / 3)
    assert result["chair_s_all"] == 50.0
    assert result["chair_i"] == pytest.approx(300 / 7)
    assert result["recall"] == 50.0
    assert (result["n"], result["coco_mentions"], result["hallucinated_mentions"]) == (4, 7, 3)
    assert (result["extraction_failures"], result["missing"], result["extractor"]) == (1, 0, "gpt")

    # The LLM is asked for 4 answers (not the three-word one), with the official prompt as one
    # system message at temperature 0.2; "Assistant:" is removed from the answer before prompting.
    assert len(judge.calls) == 4
    assert all(temperature == 0.2 for _, temperature in judge.calls)
    prompts = sorted(messages[0]["content"] for messages, _ in judge.calls)
    assert (
        object_extraction_messages("Describe the image.", "A dog sits on a toilet seat in the station.")[0]["content"]
        in prompts
    )
    assert all("Assistant:" not in prompt for prompt in prompts)


def test_gpt_item_records(spacy_pipeline):
    judge = ScriptedJudge(GPT_REPLIES)
    answer = GPT_ANSWERS[2]
    record = object_halbench_item_result(
        answer["text"], GROUND_TRUTH[4], extractor="gpt", question=answer["prompt"], judge=judge, nlp=spacy_pipeline
    )
    assert record["status"] == "scored"
    assert record["mentions"] == [["wine glass", "wine glass"], ["cell phone", "cell phone"], ["table", "dining table"]]
    assert record["hallucinated"] == [["cell phone", "cell phone"]]
    assert record["judge_reply"] == GPT_REPLIES[answer["text"]]
    failed = object_halbench_item_result(
        GPT_ANSWERS[3]["text"],
        GROUND_TRUTH[3],
        extractor="gpt",
        question="Describe the image.",
        judge=judge,
        nlp=spacy_pipeline,
    )
    assert failed["status"] == "extraction_failed" and failed["mentions"] == []


def test_gpt_path_needs_judge_and_questions(spacy_pipeline):
    with pytest.raises(ValueError, match="needs a judge"):
        score_object_halbench(GROUND_TRUTH, GPT_ANSWERS, extractor="gpt", nlp=spacy_pipeline)
    no_question = [{"question_id": 1, "image_id": 1, "text": "A dog runs across a big field."}]
    with pytest.raises(ValueError, match="question"):
        score_object_halbench(GROUND_TRUTH, no_question, extractor="gpt", judge=ScriptedJudge({}), nlp=spacy_pipeline)


def test_gpt_path_missing_spacy_model_is_an_error():
    judge = ScriptedJudge(GPT_REPLIES)
    with pytest.raises(NLPResourceError, match="python -m spacy download ue_dpo_no_such_model"):
        score_object_halbench(GROUND_TRUTH, GPT_ANSWERS[:1], extractor="gpt", judge=judge, nlp="ue_dpo_no_such_model")


def test_score_files(tmp_path):
    coco_dir = write_coco_files(tmp_path / "annotations")
    answers_path = tmp_path / "answers.jsonl"
    answers_path.write_text("".join(json.dumps(answer) + "\n" for answer in RULE_ANSWERS), encoding="utf-8")
    assert load_coco_ground_truth(coco_dir, [1, 2, 3, 4]) == GROUND_TRUTH
    from_files = score_object_halbench_files(coco_dir, answers_path)
    assert from_files == score_object_halbench(GROUND_TRUTH, RULE_ANSWERS)
    assert from_files["chair_s"] == 75.0


@pytest.mark.parametrize(
    "missing",
    ["instances_train2014.json", "instances_val2014.json", "captions_train2014.json", "captions_val2014.json"],
)
def test_missing_coco_file_is_named(tmp_path, missing):
    coco_dir = write_coco_files(tmp_path / "annotations", skip=(missing,))
    with pytest.raises(FileNotFoundError) as error:
        load_coco_ground_truth(coco_dir, [1])
    assert missing in str(error.value)


def test_answers_for_unknown_images_are_refused():
    with pytest.raises(ValueError, match=r"No COCO ground truth for image id\(s\) \[77\]"):
        score_object_halbench(GROUND_TRUTH, [{"question_id": 1, "image_id": 77, "text": "A dog."}])


def test_a_repeated_question_id_is_refused_instead_of_counted_twice():
    # 6 questions, one of them answered twice: the official script would count n 7.
    answers = [*RULE_ANSWERS[:6], {**RULE_ANSWERS[2], "text": "A train."}]
    with pytest.raises(
        ValueError,
        match=r"^Object-HalBench answers: question_id 3 appears twice \(answers 2 and 6\); "
        r"score each question once",
    ):
        score_object_halbench(GROUND_TRUTH, answers)
    # Without question_id an answer is named by its position, so nothing repeats.
    unnamed = [{key: value for key, value in answer.items() if key != "question_id"} for answer in RULE_ANSWERS]
    assert score_object_halbench(GROUND_TRUTH, unnamed) == score_object_halbench(GROUND_TRUTH, RULE_ANSWERS)


def test_no_mentions_leaves_ratios_undefined():
    result = score_object_halbench(GROUND_TRUTH, [{"question_id": 1, "image_id": 1, "text": "Nothing here."}])
    assert (result["chair_s"], result["chair_i"], result["chair_s_all"], result["recall"]) == (None, None, 0.0, 0.0)
