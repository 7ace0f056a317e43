"""Mini benchmark fixtures in the exact official file formats, with the numbers worked out by hand in
tests/test_amber.py, tests/test_object_halbench.py and tests/test_mmhal.py.

Writers:
* `write_amber_data_dir(dir)`: AMBER's data/ folder (annotations.json, relation.json, safe_words.txt,
  query/query_generative.json, query/query_discriminative.json); `write_amber_images(dir)`: AMBER_<n>.jpg.
* `write_coco_files(dir)`: the four COCO 2014 annotation JSONs; `write_object_halbench_questions(dir)`:
  RLAIF-V's obj_halbench_300_with_image.jsonl (base64 images) for the images of `RULE_ANSWERS`.
* `write_mmhal_dir(dir)`: MMHal-Bench's response_template.json plus images/; `write_mmhal_responses(path)`:
  the template with `model_answer` filled in; `judge_by_type` scripts the judge's reply per question type.

The words of the responses are those tests/nlp_resources.py tags, lemmatises and embeds.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

from PIL import Image

# ---- AMBER ------------------------------------------------------------------------------------

RELATION = {
    "dog": ["puppy"],
    "cat": ["kitten"],
    "grass": ["lawn"],
    "lake": ["water"],
    "river": [],
    "pond": [],
    "person": ["man", "woman"],
    "tree": [],
    "car": [],
    "glass": ["cup"],
    "light": [],
    "sky": [],
}
SAFE_WORDS = ["orange", "light"]

EXISTENCE, STATE, NUMBER, ACTION = (
    "discriminative-hallucination",
    "discriminative-attribute-state",
    "discriminative-attribute-number",
    "discriminative-attribute-action",
)


def generative(item_id, truth, hallu):
    return {"id": item_id, "type": "generative", "truth": truth, "hallu": hallu}


def question(item_id, kind, truth):
    return {"id": item_id, "type": kind, "truth": truth}


ANNOTATIONS = [
    generative(1, ["dog", "grass"], ["cat", "car"]),
    generative(2, ["person", "lake"], ["river", "tree"]),
    generative(3, ["glass"], ["cat"]),
    generative(4, ["sky"], ["dog"]),
    generative(5, ["grass"], ["lake"]),
    question(6, EXISTENCE, "no"),
    question(7, EXISTENCE, "no"),
    question(8, EXISTENCE, "yes"),
    question(9, EXISTENCE, "yes"),
    question(10, EXISTENCE, "yes"),
    question(11, STATE, "no"),
    question(12, STATE, "yes"),
    question(13, NUMBER, "no"),
    question(14, ACTION, "yes"),
    question(15, "discriminative-relation", "no"),
    question(16, "relation", "yes"),
    question(17, "relation", "yes"),
    generative(18, ["car"], ["dog"]),  # never answered
    question(19, EXISTENCE, "no"),  # answered with None
]

RESPONSES = [
    {"id": 1, "response": "A puppy sits on the lawn near a cat and a dog."},
    {"id": 2, "response": "A man stands by the river."},
    {"id": 3, "response": "Two glasses and a pond under the light. Dogs sleep."},
    {"id": 4, "response": ""},
    {"id": 5, "response": "A river flows past the grass."},
    {"id": 6, "response": "No"},
    {"id": 7, "response": "no"},
    {"id": 8, "response": "No"},
    {"id": 9, "response": "No"},
    {"id": 10, "response": "Yes"},
    {"id": 11, "response": "No"},
    {"id": 12, "response": "Yes"},
    {"id": 13, "response": "Yes"},
    {"id": 14, "response": "Yes."},
    {"id": 15, "response": "No"},
    {"id": 16, "response": "No"},
    {"id": 17, "response": "Yes"},
    {"id": 19, "response": None},
]

# AMBER's images are shared: each generative item has its own, the questions ask about those.
AMBER_GENERATIVE_IDS = tuple(entry["id"] for entry in ANNOTATIONS if entry["type"] == "generative")


def amber_image_name(item_id: int) -> str:
    if item_id in AMBER_GENERATIVE_IDS:
        return f"AMBER_{item_id}.jpg"
    return f"AMBER_{AMBER_GENERATIVE_IDS[item_id % len(AMBER_GENERATIVE_IDS)]}.jpg"


def amber_query(entry) -> str:
    return (
        "Describe this image."
        if entry["type"] == "generative"
        else f"Is there a thing number {entry['id']} in this image?"
    )


def write_amber_data_dir(directory: Path, *, skip=()) -> Path:
    """AMBER's data/ folder for `ANNOTATIONS`; `skip` leaves out files by their path inside the folder."""
    directory.mkdir(parents=True, exist_ok=True)
    queries = {
        kind: [
            {"id": entry["id"], "image": amber_image_name(entry["id"]), "query": amber_query(entry)}
            for entry in ANNOTATIONS
            if (entry["type"] == "generative") == (kind == "generative")
        ]
        for kind in ("generative", "discriminative")
    }
    contents = {
        "annotations.json": json.dumps(ANNOTATIONS),
        "relation.json": json.dumps(RELATION),
        "safe_words.txt": "\n".join(SAFE_WORDS),  # no final newline, as upstream
        "query/query_generative.json": json.dumps(queries["generative"], indent=4),
        "query/query_discriminative.json": json.dumps(queries["discriminative"], indent=4),
    }
    for name, text in contents.items():
        if name not in skip:
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            (directory / name).write_text(text, encoding="utf-8")
    return directory


def fixture_color(index: int) -> tuple[int, int, int]:
    """A distinct solid colour per image, so a test can tell which image it got."""
    return (40 * (index % 6), 255 - 30 * (index % 8), 60 + 20 * (index % 9))


def fixture_image(index: int, size=(24, 16)) -> Image.Image:
    return Image.new("RGB", size, fixture_color(index))


def write_amber_images(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for item_id in AMBER_GENERATIVE_IDS:
        fixture_image(item_id).save(directory / f"AMBER_{item_id}.jpg", format="JPEG", quality=95)
    return directory


# ---- Object-HalBench (COCO 2014) ---------------------------------------------------------------

CATEGORIES = [
    {"supercategory": "person", "id": 1, "name": "person"},
    {"supercategory": "vehicle", "id": 7, "name": "train"},
    {"supercategory": "animal", "id": 18, "name": "dog"},
    {"supercategory": "furniture", "id": 70, "name": "toilet"},
]


def instances(annotations):
    return {"info": {}, "licenses": [], "images": [], "categories": CATEGORIES, "annotations": annotations}


def captions(annotations):
    return {"info": {}, "licenses": [], "images": [], "annotations": annotations}


INSTANCES_TRAIN = instances(
    [
        {"id": 101, "image_id": 1, "category_id": 18},
        {"id": 102, "image_id": 2, "category_id": 70},
        {"id": 103, "image_id": 9, "category_id": 18},  # an image nobody answers about
    ]
)
INSTANCES_VAL = instances(
    [
        {"id": 201, "image_id": 1, "category_id": 1},
        {"id": 202, "image_id": 3, "category_id": 7},
    ]
)
CAPTIONS_TRAIN = captions(
    [
        {"id": 301, "image_id": 2, "caption": "A toilet seat next to a sink."},
        {"id": 302, "image_id": 3, "caption": "A passenger train on the train tracks."},
    ]
)
CAPTIONS_VAL = captions(
    [
        {"id": 401, "image_id": 1, "caption": "A woman throws a frisbee to her dogs."},
        {"id": 402, "image_id": 4, "caption": "Wine glasses on a table."},
    ]
)

# Image 1: dog (train instances), person (val instances), + captions: woman -> person, frisbee, dogs -> dog.
# Image 2: toilet; caption "toilet seat" -> toilet ("seat" is not a chair), sink.
# Image 3: train; caption "passenger train" -> train, "train tracks" -> "train track", not an object.
# Image 4: no instances; caption "wine glasses" -> wine glass, "table" -> dining table.
GROUND_TRUTH = {
    1: frozenset({"dog", "person", "frisbee"}),
    2: frozenset({"toilet", "sink"}),
    3: frozenset({"train"}),
    4: frozenset({"wine glass", "dining table"}),
}

RULE_ANSWERS = [
    {
        "question_id": 1,
        "image_id": 1,
        "prompt": "Describe the image.",
        "text": "Assistant: A baby dog and two dogs chase a ball near a man.",
    },
    {
        "question_id": 2,
        "image_id": 2,
        "prompt": "Describe the image.",
        "text": "The toilet has a seat and a bow tie on it.",
    },
    {"question_id": 3, "image_id": 3, "prompt": "Describe the image.", "text": "A train on the train tracks."},
    {"question_id": 4, "image_id": 4, "prompt": "Describe the image.", "text": "Nothing to see here."},
    {"question_id": 5, "image_id": 4, "prompt": "Describe the image.", "text": "Wine glasses and a teddy bear."},
    {"question_id": 6, "image_id": 1, "prompt": "Describe the image.", "text": ""},
    {"question_id": 7, "image_id": 2, "prompt": "Describe the image.", "text": None},
]
# The rule path over RULE_ANSWERS (worked out in tests/test_object_halbench.py::test_rule_path_scores):
# chair_s 3/4, chair_s_all 3/6, chair_i 3/9, recall 5/13 (percent), the None answer missing.


def write_coco_files(directory: Path, *, skip=()) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    contents = {
        "instances_train2014.json": INSTANCES_TRAIN,
        "instances_val2014.json": INSTANCES_VAL,
        "captions_train2014.json": CAPTIONS_TRAIN,
        "captions_val2014.json": CAPTIONS_VAL,
    }
    for name, content in contents.items():
        if name not in skip:
            (directory / name).write_text(json.dumps(content), encoding="utf-8")
    return directory


def encoded_jpeg(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def write_object_halbench_questions(directory: Path, answers=RULE_ANSWERS[:6]) -> Path:
    """RLAIF-V's question file, one line {"image_id", "question", "image" (base64 JPEG)} per answer given."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps(
            {
                "image_id": answer["image_id"],
                "question": answer["prompt"],
                "image": encoded_jpeg(fixture_image(answer["image_id"])),
            }
        )
        for answer in answers
    ]
    (directory / "obj_halbench_300_with_image.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


# ---- MMHal-Bench -----------------------------------------------------------------------------

MMHAL_QUESTION_TYPES = (
    "attribute",
    "adversarial",
    "comparison",
    "counting",
    "relation",
    "environment",
    "holistic",
    "other",
)

# Reply per question type. "Rating:4" (no space) is unparsed and scores 0, so the ratings per type
# are 6, 5, 4, 3, 2, 1, 0, 0: score 21 / 8 = 2.625, hallucination rate 4 / 8, informativeness
# (3 + 2 + 1 + 0 + 2 + 1 + 0 + 0) / 8 / 3 * 100 = 37.5 (tests/test_mmhal.py).
REPLY_BY_TYPE = {
    "attribute": "Detailed and correct.\nRating: 6, very informative with good analysis or reasoning, no hallucination",
    "adversarial": "rating: 5",
    "comparison": "RATING: 4",
    "counting": "Rating: 3, not informative, no hallucination",
    "relation": "Rating: 2",
    "environment": "Rating: 1",
    "holistic": "Rating: 0",
    "other": "Rating:4",
}


def mmhal_items(count: int = 96) -> list[dict]:
    """Template items in the official key order, with `model_answer` filled in."""
    return [
        {
            "question_type": MMHAL_QUESTION_TYPES[index % 8],
            "question_topic": "outdoor",
            "image_id": f"img{index}",
            "image_src": f"https://example.invalid/{index}.jpg",
            "image_content": ["Dog", "Umbrella"],
            "question": f"Question {index} of type {MMHAL_QUESTION_TYPES[index % 8]}?",
            "gt_answer": "A dog under an umbrella.",
            "model_answer": f"Answer {index}.",
        }
        for index in range(count)
    ]


def write_mmhal_responses(path: Path, count: int = 96) -> list[dict]:
    items = mmhal_items(count)
    path.write_text(json.dumps(items), encoding="utf-8")
    return items


def write_mmhal_dir(directory: Path, count: int = 8) -> Path:
    """response_template.json (empty `model_answer`, as published) and images/<last part of image_src>."""
    (directory / "images").mkdir(parents=True, exist_ok=True)
    items = [{**item, "model_answer": ""} for item in mmhal_items(count)]
    (directory / "response_template.json").write_text(json.dumps(items, indent=2), encoding="utf-8")
    for index in range(count):
        fixture_image(index).save(directory / "images" / f"{index}.jpg", format="JPEG", quality=95)
    return directory


def judge_by_type(payload) -> str:
    """The scripted judge: REPLY_BY_TYPE of the question type named in the prompt's question."""
    question_text = payload["messages"][-1]["content"].split("### Question\n")[-1].split("\n")[0]
    return REPLY_BY_TYPE[question_text.split(" of type ")[1].rstrip("?")]
