"""The one CHAIR implementation (`ue_dpo.benchmarks.chair`) on a small case counted by hand, and the two benchmarks
that use it giving the same totals for the same mentions."""

import pytest

from ue_dpo.benchmarks.chair import ChairCounts, chair_counts, chair_record, percent
from ue_dpo.benchmarks.object_halbench import object_halbench_metrics
from ue_dpo.benchmarks.shapes_chair import shapes_caption_item_result, shapes_chair_metrics

# (mentions in order, ground truth); hand counts in the comments: hallucinated mentions | covered objects
HAND_CASES = [
    (["dog", "cat", "dog"], ["dog", "bird"]),  # cat | dog
    (["car", "car"], ["car"]),  # - | car
    ([], ["bus", "car"]),  # no mention
    (["boat"], []),  # boat | -
]


def test_records_keep_every_mention_and_name_each_hallucination():
    records = [chair_record(mentions, truth) for mentions, truth in HAND_CASES]
    assert records[0] == {
        "mentions": ["dog", "cat", "dog"],
        "hallucinated": ["cat"],
        "covered": ["dog"],
        "ground_truth": ["bird", "dog"],
    }
    assert records[1] == {"mentions": ["car", "car"], "hallucinated": [], "covered": ["car"], "ground_truth": ["car"]}
    assert records[2] == {"mentions": [], "hallucinated": [], "covered": [], "ground_truth": ["bus", "car"]}
    assert records[3] == {"mentions": ["boat"], "hallucinated": ["boat"], "covered": [], "ground_truth": []}


def test_a_mention_names_its_object_through_object_of():
    record = chair_record([["puppy", "dog"], ["kitty", "cat"]], ["dog"], object_of=lambda mention: mention[1])
    assert record["hallucinated"] == [["kitty", "cat"]] and record["covered"] == ["dog"]


def test_totals_and_metrics_of_the_hand_case():
    counts = chair_counts(chair_record(mentions, truth) for mentions, truth in HAND_CASES)
    # responses 4, with a mention 3 (1, 2, 4), with a hallucination 2 (1, 4); mentions 3 + 2 + 0 + 1 = 6,
    # hallucinated 1 + 1 = 2; ground truth 2 + 1 + 2 + 0 = 5, covered 1 + 1 = 2
    assert counts == ChairCounts(
        responses=4,
        responses_with_mentions=3,
        hallucinated_responses=2,
        mentions=6,
        hallucinated_mentions=2,
        ground_truth=5,
        covered=2,
    )
    assert counts.metrics() == {
        "chair_s": pytest.approx(200 / 3),
        "chair_s_all": 50.0,
        "chair_i": pytest.approx(100 / 3),
        "recall": 40.0,
    }


def test_a_zero_denominator_is_undefined_not_zero():
    assert percent(0, 0) is None and percent(0, 4) == 0.0 and percent(1, 4) == 25.0
    assert ChairCounts().metrics() == {"chair_s": None, "chair_s_all": None, "chair_i": None, "recall": None}
    silent = chair_counts([chair_record([], ["dog"])]).metrics()
    assert silent == {"chair_s": None, "chair_s_all": 0.0, "chair_i": None, "recall": 0.0}


def test_object_halbench_and_the_shapes_tasks_total_the_same_mentions_alike():
    captions = [("a circle and a star", ["circle", "square"]), ("", ["star"]), ("a circle, then circles", ["circle"])]
    shapes = shapes_chair_metrics(shapes_caption_item_result(text, truth) for text, truth in captions)
    # the same mentions as COCO words ([word, class]): dog for circle, cat for star, bird for square
    answers = [([["dog", "dog"], ["cat", "cat"]], ["dog", "bird"]), ([], ["cat"]), ([["dogs", "dog"]] * 2, ["dog"])]
    records = [
        {
            "status": "scored",
            "empty": not mentions,
            "word_count": 3,
            **chair_record(mentions, truth, object_of=lambda mention: mention[1]),
        }
        for mentions, truth in answers
    ]
    halbench = object_halbench_metrics(records)
    assert shapes_caption_item_result(*captions[2])["mentions"] == ["circle", "circle"]
    for name in ("chair_s", "chair_s_all", "chair_i", "recall"):
        assert halbench[name] == shapes[name]
    assert halbench["chair_i"] == pytest.approx(100 / 4) and halbench["recall"] == pytest.approx(200 / 4)
    assert (halbench["coco_mentions"], halbench["covered_objects"]) == (shapes["mentions"], shapes["covered_shapes"])
