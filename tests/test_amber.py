"""AMBER scorer against hand-made fixtures in the official file formats.

NLP resources: tests/nlp_resources.py builds real-format NLTK data (punkt_tab, the perceptron
tagger's JSON files, a small WordNet) found through `nltk.data.path`, and a small spaCy pipeline on
disk loaded with `spacy.load(path)`, whose vectors give: cos(river, lake) = cos(river, water) = 0.9,
cos(pond, lake) = 0.6, cos(tree, grass) = 0.5, 1 within {dog, puppy}, {cat, kitten}, {lake, water},
{grass, lawn}, {person, man, woman}, {glass, cup}, {sky, light}, 0 otherwise.

Every expected number below is worked out by hand from the official formulas: denominators start
at 0.001 (metrics.txt), each metric is round(x * 100, 1), F1 = round(2PR / (P + R + eps) * 100, 1)
from the rounded P and R (percent / 100) with eps 0.001 for existence and 0.0001 elsewhere.
"""

from __future__ import annotations

import json
import re
import threading

import nltk
import pytest

from benchmark_fixtures import (
    ANNOTATIONS,
    EXISTENCE,
    RELATION,
    RESPONSES,
    SAFE_WORDS,
    generative,
    question,
    write_amber_data_dir,
)
from nlp_resources import install_test_resources, write_punkt_tab, write_wordnet
from ue_dpo.benchmarks.amber import (
    AMBER_GENERATIVE_PROMPT,
    AmberDataError,
    AmberVocabulary,
    amber_item_result,
    amber_metrics,
    amber_nouns,
    amber_reference,
    parse_amber_answer,
    score_amber,
    score_amber_files,
)
from ue_dpo.benchmarks.nlp import (
    NLTK_DOWNLOAD_ENV_VAR,
    NLTK_INSTALL_COMMAND,
    NLPResourceError,
    NltkToolkit,
    ensure_nltk_resources,
)


@pytest.fixture(scope="module")
def spacy_pipeline():
    return str(install_test_resources().spacy_pipeline)


@pytest.fixture(scope="module")
def vocabulary():
    return AmberVocabulary.from_data(RELATION, SAFE_WORDS)


def records_by_id(spacy_pipeline, vocabulary, parse="exact"):
    responses = {item["id"]: item["response"] for item in RESPONSES}
    return {
        entry["id"]: amber_item_result(
            entry, responses.get(entry["id"]), vocabulary=vocabulary, nlp=spacy_pipeline, parse=parse
        )
        for entry in ANNOTATIONS
    }


def test_prompt_is_the_official_one():
    assert AMBER_GENERATIVE_PROMPT == "Describe this image."


def test_nouns_are_lemmatised_nn_tokens_without_lower_casing():
    install_test_resources()
    # "glasses" -> "glass" through WordNet; the capitalised "Dogs" is not in WordNet's index, so it
    # stays "Dogs" (the official code does not lower-case) and is later outside the vocabulary.
    assert amber_nouns("Two glasses and a pond under the light. Dogs sleep.") == ["glass", "pond", "light", "Dogs"]


def test_generative_item_counts(spacy_pipeline, vocabulary):
    records = records_by_id(spacy_pipeline, vocabulary)

    # 1: truth dog, grass (safe words puppy, lawn, dog, grass); hallu cat, car (kitten, cat, car).
    # puppy -> covers dog, lawn -> covers grass, dog -> exact; cat: exact hallu hit (Cog), no safe
    # word within 0.8 -> flagged.
    assert records[1]["counted_nouns"] == ["puppy", "lawn", "cat", "dog"]
    assert records[1]["hallucinated_nouns"] == ["cat"]
    assert (records[1]["covered_truth_objects"], records[1]["mentioned_hallu_objects"]) == (2, 1)

    # 2: man covers person; river is a hallu object (Cog + 1) but cos(river, water) = 0.9 > 0.8, so
    # the safe-word check that follows clears it and covers lake: hallu words first, then safe words.
    assert records[2]["hallucinated_nouns"] == []
    assert (records[2]["covered_truth_objects"], records[2]["mentioned_hallu_objects"]) == (2, 1)
    assert records[2]["hallucination_free"] is True

    # 3: glass covers glass; pond is in the vocabulary, cos 0.6 to lake is no match -> flagged;
    # light is a global safe word: counted (3 nouns) but never flagged; "Dogs" is not in the vocabulary.
    assert records[3]["counted_nouns"] == ["glass", "pond", "light"]
    assert records[3]["hallucinated_nouns"] == ["pond"]

    # 4: empty response: nothing counted, hallucination-free, sky not covered.
    assert records[4]["mentions"] == 0 and records[4]["hallucination_free"] is True
    assert records[4]["covered_truth_objects"] == 0

    # 5: river is no exact hit, but cos(river, water) = 0.9 marks hallu object lake (Cog); no safe
    # word (lawn, grass) is close -> flagged; grass covers grass.
    assert records[5]["hallucinated_nouns"] == ["river"]
    assert (records[5]["covered_truth_objects"], records[5]["mentioned_hallu_objects"]) == (1, 1)

    assert records[4]["empty"] is True and records[1]["empty"] is False
    assert records[18] == {"id": 18, "task": "generative", "missing": True, "empty": False}


def test_similarity_threshold_is_configurable(spacy_pipeline, vocabulary):
    entry = ANNOTATIONS[1]
    # At 0.95 the 0.9 similarity of river to water no longer clears it.
    record = amber_item_result(
        entry, "A man stands by the river.", vocabulary=vocabulary, nlp=spacy_pipeline, similarity_threshold=0.95
    )
    assert record["hallucinated_nouns"] == ["river"]
    record = amber_item_result(
        entry, "A man stands by the river.", vocabulary=vocabulary, nlp=spacy_pipeline, similarity_threshold=0.85
    )
    assert record["hallucinated_nouns"] == []


def test_score_exact_parse(spacy_pipeline):
    result = score_amber(ANNOTATIONS, RELATION, SAFE_WORDS, RESPONSES, nlp=spacy_pipeline)

    # Generative, items 1-5 in order: nouns 4+2+3+0+2 = 11, flagged 1+0+1+0+1 = 3,
    # truth 2+2+1+1+1 = 7 covered 2+2+1+0+1 = 6, hallu 2+2+1+1+1 = 7 mentioned 1+1+0+0+1 = 3,
    # hallucination-free: items 2 and 4 of 5.
    # CHAIR = round(3 / 11.001 * 100, 1) = round(27.270, 1) = 27.3
    # Cover = round(6 / 7.001 * 100, 1) = round(85.702, 1) = 85.7
    # Hal   = round(100 - 2 / 5.001 * 100, 1) = round(60.008, 1) = 60.0
    # Cog   = round(3 / 7.001 * 100, 1) = round(42.851, 1) = 42.9
    # Item 4 is empty and stays in every denominator, as in the official code, and is counted as empty.
    # (Left out, Hal would be round(100 - 1 / 4.001 * 100, 1) = 75.0 and Cover round(6 / 6.001 * 100, 1) = 100.0.)
    assert result["generative"] == {
        "CHAIR": 27.3,
        "Cover": 85.7,
        "Hal": 60.0,
        "Cog": 42.9,
        "n": 5,
        "missing": 1,
        "empty": 1,
    }

    disc = result["discriminative"]
    # Existence, 6-10 (truth/answer): no/No, no/"no" (not exactly "No": wrong, unparsed), yes/No,
    # yes/No, yes/Yes. correct 2 of 5.001; truth no 2.001; answered No 3.001; no-and-No 1.
    # Accuracy = round(2 / 5.001 * 100, 1) = round(39.992, 1) = 40.0
    # Precision = round(1 / 3.001 * 100, 1) = round(33.322, 1) = 33.3
    # Recall = round(1 / 2.001 * 100, 1) = round(49.975, 1) = 50.0
    # F1 = round(2 * .333 * .5 / (.333 + .5 + .001) * 100, 1) = round(39.928, 1) = 39.9
    #   (with the 0.0001 of the other groups it would be round(39.971, 1) = 40.0)
    # Item 19 answered None: missing, not scored.
    assert disc["existence"] == {
        "Accuracy": 40.0,
        "Precision": 33.3,
        "Recall": 50.0,
        "F1": 39.9,
        "n": 5,
        "unparsed": 1,
        "missing": 1,
    }

    # Attribute pools the state (11 no/No, 12 yes/Yes), number (13 no/Yes) and action (14 yes/"Yes."
    # unparsed) counters, each starting at 0.001, so denominators carry 0.003:
    # questions 2.001 + 1.001 + 1.001 = 4.003, correct 2; truth no 1.001 + 1.001 + 0.001 = 2.003;
    # answered No 1.001 + 0.001 + 0.001 = 1.003; no-and-No 1.
    # Accuracy = round(2 / 4.003 * 100, 1) = round(49.963, 1) = 50.0
    # Precision = round(1 / 1.003 * 100, 1) = round(99.701, 1) = 99.7
    # Recall = round(1 / 2.003 * 100, 1) = round(49.925, 1) = 49.9
    # F1 = round(2 * .997 * .499 / (.997 + .499 + .0001) * 100, 1) = round(66.507, 1) = 66.5
    assert disc["attribute"] == {
        "Accuracy": 50.0,
        "Precision": 99.7,
        "Recall": 49.9,
        "F1": 66.5,
        "n": 4,
        "unparsed": 1,
        "missing": 0,
    }
    # State alone: Accuracy round(2 / 2.001 * 100, 1) = round(99.950, 1) = 100.0 (2/2.001*100 = 99.95002);
    # P = R = round(1 / 1.001 * 100, 1) = 99.9;
    # F1 = round(2 * .999 * .999 / (1.998 + .0001) * 100, 1) = round(99.895, 1) = 99.9
    assert disc["state"] == {
        "Accuracy": 100.0,
        "Precision": 99.9,
        "Recall": 99.9,
        "F1": 99.9,
        "n": 2,
        "unparsed": 0,
        "missing": 0,
    }
    # Number: nothing right and no "No" answer: 0 / 1.001, 0 / 0.001, 0 / 1.001 -> all 0.0; F1 0 / 0.0001 = 0.0
    assert disc["number"] == {
        "Accuracy": 0.0,
        "Precision": 0.0,
        "Recall": 0.0,
        "F1": 0.0,
        "n": 1,
        "unparsed": 0,
        "missing": 0,
    }
    assert disc["action"]["Accuracy"] == 0.0 and disc["action"]["unparsed"] == 1

    # Relation pools both relation types: 15 no/No, 16 yes/No, 17 yes/Yes.
    # Accuracy = round(2 / 3.001 * 100, 1) = round(66.644, 1) = 66.6
    # Precision = round(1 / 2.001 * 100, 1) = 50.0; Recall = round(1 / 1.001 * 100, 1) = 99.9
    # F1 = round(2 * .5 * .999 / (.5 + .999 + .0001) * 100, 1) = round(66.640, 1) = 66.6
    assert disc["relation"] == {
        "Accuracy": 66.6,
        "Precision": 50.0,
        "Recall": 99.9,
        "F1": 66.6,
        "n": 3,
        "unparsed": 0,
        "missing": 0,
    }

    # Overall, 12 answered questions: correct 2 + 2 + 2 = 6; truth no 2 + 2 + 1 = 5; answered No
    # 3 + 1 + 2 = 6; no-and-No 1 + 1 + 1 = 3 (each counter with its own single 0.001).
    # Accuracy = round(6 / 12.001 * 100, 1) = round(49.996, 1) = 50.0
    # Precision = round(3 / 6.001 * 100, 1) = round(49.992, 1) = 50.0
    # Recall = round(3 / 5.001 * 100, 1) = round(59.988, 1) = 60.0
    # F1 = round(2 * .5 * .6 / (.5 + .6 + .0001) * 100, 1) = round(54.541, 1) = 54.5
    assert disc["overall"] == {
        "Accuracy": 50.0,
        "Precision": 50.0,
        "Recall": 60.0,
        "F1": 54.5,
        "n": 12,
        "unparsed": 2,
        "missing": 1,
    }

    # AMBER Score = (100 - 27.3 + 54.5) / 2 = 63.6
    assert result["amber_score"] == 63.6
    assert result["parse"] == "exact"


def test_score_lenient_parse(spacy_pipeline):
    result = score_amber(ANNOTATIONS, RELATION, SAFE_WORDS, RESPONSES, nlp=spacy_pipeline, parse="lenient")
    disc = result["discriminative"]
    # "no" (7) now is No, "Yes." (14) is Yes; nothing is unparsed.
    # Existence: correct 3 / 5.001 -> round(59.988, 1) = 60.0; answered No 4.001, no-and-No 2:
    # P = round(2 / 4.001 * 100, 1) = round(49.988, 1) = 50.0; R = round(2 / 2.001 * 100, 1) = round(99.950, 1) = 100.0
    # F1 = round(2 * .5 * 1 / (1.5 + .001) * 100, 1) = round(66.622, 1) = 66.6
    assert disc["existence"] == {
        "Accuracy": 60.0,
        "Precision": 50.0,
        "Recall": 100.0,
        "F1": 66.6,
        "n": 5,
        "unparsed": 0,
        "missing": 1,
    }
    # Overall: correct 3 + 3 + 2 = 8 -> round(8 / 12.001 * 100, 1) = round(66.661, 1) = 66.7;
    # answered No 4 + 1 + 2 = 7, no-and-No 2 + 1 + 1 = 4:
    # P = round(4 / 7.001 * 100, 1) = round(57.135, 1) = 57.1; R = round(4 / 5.001 * 100, 1) = round(79.984, 1) = 80.0
    # F1 = round(2 * .571 * .8 / (.571 + .8 + .0001) * 100, 1) = round(66.633, 1) = 66.6
    assert disc["overall"] == {
        "Accuracy": 66.7,
        "Precision": 57.1,
        "Recall": 80.0,
        "F1": 66.6,
        "n": 12,
        "unparsed": 0,
        "missing": 1,
    }
    # Generative numbers do not depend on the parse; AMBER Score = (100 - 27.3 + 66.6) / 2 = 69.65
    assert result["generative"]["CHAIR"] == 27.3
    assert result["amber_score"] == 69.65
    assert result["parse"] == "lenient"


@pytest.mark.parametrize(
    ("response", "exact", "lenient"),
    [
        ("Yes", "Yes", "Yes"),
        ("No", "No", "No"),
        ("no", None, "No"),
        ("No.", None, "No"),
        (" Yes", None, "Yes"),
        ("Yes\n", None, "Yes"),
        ('"No", there is none.', None, "No"),
        ("Not really.", None, None),
        ("The answer is no.", None, None),
        ("Nope", None, None),
        ("", None, None),
    ],
)
def test_answer_parsing(response, exact, lenient):
    assert parse_amber_answer(response, "exact") == exact
    assert parse_amber_answer(response, "lenient") == lenient


def test_counters_start_at_0_001_once_per_run(spacy_pipeline):
    annotations = [generative(i, ["sky"], ["dog"]) for i in range(1, 11)] + [
        question(i, EXISTENCE, "yes") for i in range(11, 21)
    ]
    responses = [{"id": i, "response": ""} for i in range(1, 11)] + [
        {"id": i, "response": "Yes"} for i in range(11, 21)
    ]
    result = score_amber(annotations, RELATION, SAFE_WORDS, responses, nlp=spacy_pipeline)
    # Ten hallucination-free responses: Hal = round(100 - 10 / 10.001 * 100, 1) = round(0.0100, 1) = 0.0
    # (an epsilon per item, 10 / 10.01, would give round(0.0999, 1) = 0.1).
    assert result["generative"]["Hal"] == 0.0
    # Ten right answers: Accuracy = round(10 / 10.001 * 100, 1) = round(99.990, 1) = 100.0 (per item: 99.9).
    assert result["discriminative"]["existence"]["Accuracy"] == 100.0
    assert result["discriminative"]["overall"]["Accuracy"] == 100.0
    # No truth "no" and no "No" answer: 0 / 0.001 -> 0.0, F1 0.0 (as the official code prints).
    assert result["discriminative"]["overall"]["Precision"] == 0.0 and result["discriminative"]["overall"]["F1"] == 0.0
    # No attribute or relation item: their metrics are None, not 0.
    assert result["discriminative"]["relation"]["Accuracy"] is None


def test_groups_without_items_are_none(spacy_pipeline):
    result = score_amber(ANNOTATIONS[:5], RELATION, SAFE_WORDS, RESPONSES[:5], nlp=spacy_pipeline)
    assert result["generative"]["CHAIR"] == 27.3
    assert result["discriminative"]["overall"] == {
        "Accuracy": None,
        "Precision": None,
        "Recall": None,
        "F1": None,
        "n": 0,
        "unparsed": 0,
        "missing": 0,
    }
    assert result["amber_score"] is None


def test_item_records_aggregate_like_the_whole_run(spacy_pipeline, vocabulary):
    records = records_by_id(spacy_pipeline, vocabulary)
    responses_order = [item["id"] for item in RESPONSES] + [18]
    aggregated = amber_metrics([records[item_id] for item_id in responses_order])
    whole = score_amber(ANNOTATIONS, RELATION, SAFE_WORDS, RESPONSES, nlp=spacy_pipeline)
    whole.pop("parse")
    assert aggregated == whole


def test_item_results_from_four_threads_match_sequential(spacy_pipeline, vocabulary):
    sequential = records_by_id(spacy_pipeline, vocabulary)
    responses = {item["id"]: item["response"] for item in RESPONSES}
    threaded: dict[int, dict] = {}
    errors: list[BaseException] = []

    def work(entries):
        try:
            for entry in entries:
                threaded[entry["id"]] = amber_item_result(
                    entry, responses.get(entry["id"]), vocabulary=vocabulary, nlp=spacy_pipeline
                )
        except BaseException as error:  # noqa: BLE001 - re-raised in the main thread below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(ANNOTATIONS[start::4],)) for start in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert threaded == sequential


def test_score_files_matches_in_memory(tmp_path, spacy_pipeline):
    data_dir = write_amber_data_dir(tmp_path / "data")
    responses_path = tmp_path / "responses.json"
    responses_path.write_text(json.dumps(RESPONSES), encoding="utf-8")
    from_files = score_amber_files(data_dir, responses_path, nlp=spacy_pipeline)
    assert from_files == score_amber(ANNOTATIONS, RELATION, SAFE_WORDS, RESPONSES, nlp=spacy_pipeline)
    assert from_files["amber_score"] == 63.6


@pytest.mark.parametrize("missing", ["annotations.json", "relation.json", "safe_words.txt"])
def test_missing_data_file_is_named(tmp_path, missing):
    data_dir = write_amber_data_dir(tmp_path / "data", skip=(missing,))
    responses_path = tmp_path / "responses.json"
    responses_path.write_text("[]", encoding="utf-8")
    with pytest.raises(FileNotFoundError) as error:
        score_amber_files(data_dir, responses_path)
    assert missing in str(error.value)
    assert "AMBER repository" in str(error.value) and "data/" in str(error.value)


def test_a_responses_file_that_is_not_json_is_named(tmp_path):
    data_dir = write_amber_data_dir(tmp_path / "data")
    responses_path = tmp_path / "responses.json"
    responses_path.write_text('[{"id": 1, "response": "A dog."}', encoding="utf-8")
    with pytest.raises(
        AmberDataError, match=re.escape(f"AMBER responses file {str(responses_path)!r} is not UTF-8 JSON")
    ):
        score_amber_files(data_dir, responses_path)


def test_response_id_not_in_annotations(spacy_pipeline):
    with pytest.raises(AmberDataError, match="Response id 99 is not in the AMBER annotations"):
        score_amber(ANNOTATIONS, RELATION, SAFE_WORDS, [{"id": 99, "response": "Yes"}], nlp=spacy_pipeline)


def test_bad_inputs_are_refused(spacy_pipeline):
    with pytest.raises(AmberDataError, match="appears twice"):
        score_amber(
            ANNOTATIONS,
            RELATION,
            SAFE_WORDS,
            [{"id": 6, "response": "No"}, {"id": 6, "response": "Yes"}],
            nlp=spacy_pipeline,
        )
    with pytest.raises(AmberDataError, match="unknown type"):
        amber_reference([{"id": 1, "type": "discriminative-color", "truth": "yes"}], RELATION, SAFE_WORDS)
    with pytest.raises(AmberDataError, match="'boat' is not a key of relation.json"):
        score_amber(
            [generative(1, ["boat"], [])], RELATION, SAFE_WORDS, [{"id": 1, "response": "A dog."}], nlp=spacy_pipeline
        )
    with pytest.raises(ValueError, match="parse mode"):
        score_amber(ANNOTATIONS, RELATION, SAFE_WORDS, RESPONSES, nlp=spacy_pipeline, parse="fuzzy")


def test_missing_spacy_model_is_an_error_not_a_fallback(vocabulary):
    install_test_resources()
    entry = generative(1, ["grass"], ["lake"])
    # No noun needs the similarity check: the model is never loaded.
    record = amber_item_result(entry, "The grass.", vocabulary=vocabulary, nlp="ue_dpo_no_such_model")
    assert record["hallucinated_nouns"] == []
    # "river" does, and the missing model is reported with its install command.
    with pytest.raises(NLPResourceError, match="python -m spacy download ue_dpo_no_such_model"):
        amber_item_result(entry, "A river.", vocabulary=vocabulary, nlp="ue_dpo_no_such_model")


def test_missing_nltk_resources_name_the_install_command(tmp_path):
    with pytest.raises(NLPResourceError) as error:
        ensure_nltk_resources(paths=[str(tmp_path)], download=False)
    message = str(error.value)
    assert NLTK_INSTALL_COMMAND in message
    assert "'punkt_tab'" in message and "'averaged_perceptron_tagger_eng'" in message and "'wordnet'" in message
    # With the tokenizer in place only the other two are reported.
    write_punkt_tab(tmp_path)
    with pytest.raises(NLPResourceError) as error:
        ensure_nltk_resources(paths=[str(tmp_path)], download=False)
    assert "'punkt_tab'" not in str(error.value) and "'wordnet'" in str(error.value)


def test_toolkit_reports_a_missing_resource_found_nowhere_on_the_nltk_path(tmp_path, monkeypatch):
    install_test_resources()
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    monkeypatch.setenv(NLTK_DOWNLOAD_ENV_VAR, "0")
    downloads = []
    monkeypatch.setattr(nltk, "download", lambda *args, **kwargs: downloads.append(args))
    with pytest.raises(
        NLPResourceError, match="python -m nltk.downloader punkt_tab averaged_perceptron_tagger_eng wordnet"
    ):
        NltkToolkit().lemmatize("dogs")
    assert downloads == []  # UE_DPO_NLTK_DOWNLOAD=0: no download attempted


def test_toolkit_downloads_a_missing_resource_on_first_use(tmp_path, monkeypatch):
    install_test_resources()
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    monkeypatch.delenv(NLTK_DOWNLOAD_ENV_VAR, raising=False)
    downloads = []

    def fake_download(name, **kwargs):
        # Stands in for the network: installs the resource where NLTK looks for it.
        downloads.append(name)
        write_wordnet(tmp_path, ["dog"], {})
        return True

    monkeypatch.setattr(nltk, "download", fake_download)
    ensure_nltk_resources(["wordnet"])
    assert downloads == ["wordnet"]
    ensure_nltk_resources(["wordnet"])  # now installed: no second download
    assert downloads == ["wordnet"]
