"""Exact CHAIR on the shapes world (`benchmarks.shapes_chair`) and the `shapes_caption` lmms-eval task adapter."""

import json

import pytest

from ue_dpo.benchmarks.shapes_chair import (
    score_shapes_captions,
    shapes_caption_item_result,
    shapes_chair_metrics,
)
from ue_dpo.cli import main
from ue_dpo.evaluation import shapes_caption
from ue_dpo.synthetic.blind_spots import write_blind_spot_eval_set
from ue_dpo.synthetic.shapes import CAPTION_PROMPT, EVAL_MANIFEST, mentioned_shapes, write_caption_eval_set

# (response, true shapes) with mentions / hallucinated mentions worked out by hand in the comments
HAND_CASES = [
    ("There is a red circle and a blue star.", ["circle", "square"]),  # circle, star | star
    ("Circles, circles everywhere; a SQUARE too.", ["circle", "square"]),  # circle x2, square | -
    ("A blank white picture.", ["triangle"]),  # no mention
    ("", ["star"]),  # empty response: no mention
    ("There is a star and the start of a triangle.", ["star"]),  # star, triangle ("start" is no star) | triangle
]


def test_item_records_count_every_mention_and_each_hallucination():
    records = [shapes_caption_item_result(response, truth) for response, truth in HAND_CASES]
    assert records[0] == {
        "mentions": ["circle", "star"],
        "hallucinated": ["star"],
        "covered": ["circle"],
        "ground_truth": ["circle", "square"],
    }
    assert records[1]["mentions"] == ["circle", "circle", "square"] and records[1]["hallucinated"] == []
    assert records[1]["covered"] == ["circle", "square"]
    assert records[3] == {"mentions": [], "hallucinated": [], "covered": [], "ground_truth": ["star"]}
    assert records[4]["mentions"] == ["star", "triangle"] and records[4]["hallucinated"] == ["triangle"]


def test_metrics_are_totals_over_responses():
    metrics = score_shapes_captions([response for response, _ in HAND_CASES], [truth for _, truth in HAND_CASES])
    # responses mentioning a shape: 1, 2, 5; with a hallucination: 1, 5
    assert metrics["chair_s"] == pytest.approx(2 / 3 * 100)
    assert metrics["chair_s_all"] == pytest.approx(2 / 5 * 100)
    # mentions 2 + 3 + 0 + 0 + 2 = 7, hallucinated 1 + 1 = 2
    assert metrics["chair_i"] == pytest.approx(2 / 7 * 100)
    # true shapes 2 + 2 + 1 + 1 + 1 = 7, named 1 + 2 + 0 + 0 + 1 = 4
    assert metrics["recall"] == pytest.approx(4 / 7 * 100)
    # distinct shapes named: 2, 2, 0, 0, 2
    assert metrics["mean_shapes_mentioned"] == pytest.approx(6 / 5)
    assert (metrics["n"], metrics["responses_with_mentions"], metrics["hallucinated_responses"]) == (5, 3, 2)


def test_ratios_without_a_denominator_are_undefined_not_zero():
    silent = score_shapes_captions(["Nothing to see.", ""], [["star"], ["circle", "square"]])
    assert silent["chair_s"] is None and silent["chair_i"] is None
    assert silent["chair_s_all"] == 0.0 and silent["recall"] == 0.0 and silent["mean_shapes_mentioned"] == 0.0
    empty = shapes_chair_metrics([])
    assert all(empty[name] is None for name in ("chair_s", "chair_s_all", "chair_i", "recall", "mean_shapes_mentioned"))


def test_bad_inputs_are_refused_clearly():
    with pytest.raises(ValueError, match=r"\['hexagon'\] are not shapes"):
        shapes_caption_item_result("a hexagon", ["hexagon"])
    with pytest.raises(TypeError, match="must be a string"):
        shapes_caption_item_result(None, ["star"])
    with pytest.raises(ValueError, match="2 responses for 1 images"):
        score_shapes_captions(["a", "b"], [["star"]])


@pytest.fixture
def eval_dir(tmp_path):
    main(["shapes-eval", "--out", str(tmp_path / "shapes_eval"), "--images", "5", "--seed", "3"])
    return tmp_path / "shapes_eval"


def test_shapes_eval_command_writes_the_held_out_set(eval_dir, tmp_path):
    manifest = json.loads((eval_dir / EVAL_MANIFEST).read_text())
    expected = write_caption_eval_set(tmp_path / "again", n_images=5, seed=3)
    assert [entry["shapes"] for entry in manifest] == [list(item.shapes) for item in expected]
    assert all((eval_dir / entry["image"]).is_file() for entry in manifest)


def test_task_docs_carry_the_ground_truth_of_the_manifest(eval_dir):
    docs = shapes_caption.load_shapes_eval_docs(eval_dir)
    manifest = json.loads((eval_dir / EVAL_MANIFEST).read_text())
    assert [doc["shapes"] for doc in docs] == [entry["shapes"] for entry in manifest]
    assert shapes_caption.shapes_doc_to_text(docs[0], {}) == CAPTION_PROMPT
    (image,) = shapes_caption.shapes_doc_to_visual(docs[0])
    assert image.mode == "RGB" and image.size == (56, 56)


def test_task_data_dir_comes_from_dataset_kwargs_then_the_environment(eval_dir, tmp_path, monkeypatch):
    monkeypatch.delenv(shapes_caption.SHAPES_EVAL_DIR_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match="UE_DPO_SHAPES_EVAL_DIR=DIR"):
        shapes_caption.shapes_eval_dir(None)
    monkeypatch.setenv(shapes_caption.SHAPES_EVAL_DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nowhere' / EVAL_MANIFEST} does not exist"):
        shapes_caption.shapes_eval_dir({})
    assert shapes_caption.shapes_eval_dir({"data_dir": str(eval_dir)}) == eval_dir
    monkeypatch.setenv(shapes_caption.SHAPES_EVAL_DIR_ENV, str(eval_dir))
    assert shapes_caption.shapes_eval_dir({}) == eval_dir


def test_task_results_aggregate_to_the_metric_module(eval_dir):
    docs = shapes_caption.load_shapes_eval_docs(eval_dir)[:2]
    responses = [f"There is a {docs[0]['shapes'][0]} and a circle and a star.", "Just a white background."]
    per_doc = [shapes_caption.shapes_process_results(doc, [response]) for doc, response in zip(docs, responses)]
    expected = score_shapes_captions(responses, [doc["shapes"] for doc in docs])
    for metric in ("chair_s", "chair_s_all", "chair_i", "recall", "mean_shapes_mentioned"):
        aggregate = getattr(shapes_caption, f"shapes_{metric}")
        assert aggregate([results[metric] for results in per_doc]) == expected[metric]


def test_faint_recall_counts_the_faint_shapes_named_and_leaves_the_other_metrics_as_they_are():
    responses = ["There is a red circle and a small grey star.", "There is a blue square.", "A star? No: a square."]
    truths, faint = [["circle", "star"], ["square", "triangle"], ["square"]], [["star"], ["triangle"], []]
    metrics = score_shapes_captions(responses, truths, faint)
    # faint shapes 1 + 1 + 0 = 2, named: the star of the first response
    assert metrics["faint_recall"] == pytest.approx(50.0)
    assert (metrics["faint_shapes"], metrics["covered_faint_shapes"]) == (2, 1)
    without_faint = score_shapes_captions(responses, truths)
    assert "faint_recall" not in without_faint
    assert {name: metrics[name] for name in without_faint} == without_faint
    assert shapes_caption_item_result(responses[0], truths[0], faint[0])["faint_covered"] == ["star"]
    with pytest.raises(ValueError, match=r"faint shapes \['star'\] are not among the image's shapes"):
        shapes_caption_item_result("a star", ["circle"], ["star"])


def test_faint_noun_accuracy_counts_the_small_grey_nouns_named_on_images_that_hold_a_faint_shape():
    responses = [
        "There is a red circle and a small grey star.",  # right
        "There is a blue square and a small grey circle.",  # wrong: the faint shape is a triangle
        "There is a red square and a small grey star.",  # no faint shape here: a hallucination, not counted
        "There is a green triangle and a circle.",  # the faint circle named without "small grey": no faint noun
        "There are Small Grey Squares.",  # right, in another case and plural
    ]
    truths = [["circle", "star"], ["square", "triangle"], ["square"], ["triangle", "circle"], ["square"]]
    faint = [["star"], ["triangle"], [], ["circle"], ["square"]]
    metrics = score_shapes_captions(responses, truths, faint)
    # faint nouns named on images with a faint shape: star, circle, square; right: star, square
    assert (metrics["faint_nouns_named"], metrics["faint_nouns_right"]) == (3, 2)
    assert metrics["faint_noun_accuracy"] == pytest.approx(200 / 3)
    assert metrics["faint_recall"] == pytest.approx(75.0)  # the star, circle and square of 4 faint shapes
    assert score_shapes_captions(responses[3:4], truths[3:4], faint[3:4])["faint_noun_accuracy"] is None
    # a record logged before the metric existed has no faint nouns: the metric is undefined, not 0
    logged_before = [
        shapes_caption_item_result(response, truth, shapes) for response, truth, shapes in zip(responses, truths, faint)
    ]
    del logged_before[0]["faint_nouns"]
    assert shapes_chair_metrics(logged_before)["faint_noun_accuracy"] is None
    assert shapes_chair_metrics(logged_before)["faint_recall"] == pytest.approx(75.0)


def test_the_blind_spot_task_scores_faint_recall_from_the_manifest(tmp_path):
    manifest = write_blind_spot_eval_set(tmp_path / "eval", n_images=12, seed=1)
    docs = shapes_caption.load_shapes_eval_docs(tmp_path / "eval")
    assert [doc["faint"] for doc in docs] == [entry["faint"] for entry in manifest]
    assert any(doc["faint"] for doc in docs) and any(not doc["faint"] for doc in docs)
    responses = [entry["caption"] if index % 2 else "There is a circle." for index, entry in enumerate(manifest)]
    per_doc = [shapes_caption.blind_spots_process_results(doc, [response]) for doc, response in zip(docs, responses)]
    faint_total = sum(len(entry["faint"]) for entry in manifest)
    faint_named = sum(
        len(set(entry["faint"]) & set(mentioned_shapes(response))) for entry, response in zip(manifest, responses)
    )
    assert shapes_caption.shapes_faint_recall([results["faint_recall"] for results in per_doc]) == pytest.approx(
        faint_named / faint_total * 100
    )
    # the odd responses are the true captions, each faint shape named rightly; the even ones name none
    assert any(entry["faint"] for entry in manifest[1::2])
    assert shapes_caption.shapes_faint_noun_accuracy([results["faint_noun_accuracy"] for results in per_doc]) == 100.0
    shapes_docs = shapes_caption.load_shapes_eval_docs(
        write_caption_eval_set(tmp_path / "shapes", n_images=1)[0].image_path.parents[2]
    )
    with pytest.raises(FileNotFoundError, match="lists no faint shapes"):
        shapes_caption.blind_spots_process_results(shapes_docs[0], ["There is a star."])
