"""Object-HalBench scoring (CHAIR on COCO objects) with the semantics of RLHF-V / RLAIF-V
`eval/eval_gpt_obj_halbench.py` and `eval/summarize_gpt_obj_halbench_review.py`.

Ground truth per image: the COCO 2014 instance categories of the image together with the COCO
objects the rule extractor finds in its five reference captions (train and val files merged).

Object mentions of a response come from one of two extractors:

* "nltk" (the rule path of the CHAIR code): lower-case, `nltk.word_tokenize`, WordNet-lemmatise,
  merge double words left to right, drop "seat" when "toilet" is there, keep vocabulary words.
  Every mention counts, repeats included.
* "gpt" (the path the published numbers use): an LLM lists the objects with the official prompt
  (answers of at most three words skip it and have none); spaCy lemmatises "a " + object; a
  double word is taken if one matches, else runs of NN* lemmas are joined into compounds; the
  objects are de-duplicated per response and only exact vocabulary words are kept (so "tennis
  ball" is dropped, not mapped to "ball").

Aggregates are totals over responses (percent), counted by `ue_dpo.benchmarks.chair` (the CHAIR code
of the shapes tasks too): chair_s = hallucinated responses / responses with
at least one COCO mention (the official CHAIRs_refine, "Response Hall"), chair_s_all = the same
over all responses (CHAIRs), chair_i = hallucinated mentions / all COCO mentions ("Object Hall"),
recall = distinct correctly mentioned classes / ground-truth classes, summed over responses.

Not scored, but counted: responses that are None (`missing`) and, on the gpt path, LLM replies
that are not a JSON list (`extraction_failures`; the official script retried those, which a
cached judge cannot do). Scored and counted: answers that are empty after the clean-up (`empty`);
as in the official code they mention no object, so they count in chair_s_all and recall, not in chair_s.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ue_dpo.benchmarks.chair import ChairCounts, chair_record
from ue_dpo.benchmarks.coco_vocabulary import COCO_DOUBLE_WORDS, COCO_WORD_TO_CLASS
from ue_dpo.benchmarks.nlp import (
    OBJECT_HALBENCH_SPACY_MODEL,
    NltkToolkit,
    nltk_toolkit,
    resolve_spacy_pipeline,
    spacy_doc,
)

OBJECT_HALBENCH_EXTRACTORS = ("nltk", "gpt")
OBJECT_EXTRACTION_TEMPERATURE = 0.2  # the default of the official chat client
OBJECT_EXTRACTION_SHORT_ANSWER_WORDS = 3
COCO_INSTANCE_FILES = ("instances_train2014.json", "instances_val2014.json")
COCO_CAPTION_FILES = ("captions_train2014.json", "captions_val2014.json")
_NOUN_TAGS = ("NNP", "NNPS", "NN", "NNS")

OBJECT_EXTRACTION_PROMPT = """You are an expert in image objects extraction according to a question answer pair. We asked an examiner to answer a question about a picture.

[Start of Question]

<image> {question}

[End of Question]

[Start of Examiner's Answer]

{answer}

[End of Examiner's Answer]


Assume that the answer is correct, please identify all visible objects that are directly shown in the image. Please following the instructions in below:

1. You should only mention objects that are explicitly mentioned in the examiner's answer.
2. You should only extract the object names without the attributes of the objects.
3. You should not include the properties of the object, like the color, material, etc. as part of the object name in your result.
4. Make your answer precise. Present the results in a JSON list format: ["object_1", ..., "object_n"].
5. You should return an empty JSON list () if no visible objects can be found.
"""  # noqa: E501 (the official prompt, verbatim)


class ObjectHalBenchDataError(ValueError):
    """COCO annotations or answers that cannot be scored."""


def clean_answer_text(text: str) -> str:
    """The official clean-up: every "Assistant:" removed (not only a leading one), then whitespace stripped."""
    return text.replace("Assistant:", "").strip()


# ---------------------------------------------------------------------------------------------
# Mentions
# ---------------------------------------------------------------------------------------------


def _merge_double_words(words: Sequence[str], *, keep_single_words: bool) -> list[str]:
    merged: list[str] = []
    position = 0
    while position < len(words):
        pair = " ".join(words[position : position + 2])
        if pair in COCO_DOUBLE_WORDS:
            merged.append(COCO_DOUBLE_WORDS[pair])
            position += 2
        else:
            if keep_single_words:
                merged.append(words[position])
            position += 1
    return merged


def coco_mentions(words: Sequence[str]) -> list[tuple[str, str]]:
    """(word, COCO class) for each vocabulary word, in order; "seat" is dropped when "toilet" is there."""
    if "toilet" in words and "seat" in words:
        words = [word for word in words if word != "seat"]
    return [(word, COCO_WORD_TO_CLASS[word]) for word in words if word in COCO_WORD_TO_CLASS]


def caption_coco_mentions(text: str, toolkit: NltkToolkit | None = None) -> list[tuple[str, str]]:
    """The rule extractor (CHAIR's caption_to_words): every COCO mention of `text`, repeats included."""
    toolkit = toolkit or nltk_toolkit()
    lemmas = [toolkit.lemmatize(token) for token in toolkit.word_tokenize(text.lower())]
    return coco_mentions(_merge_double_words(lemmas, keep_single_words=True))


def object_extraction_messages(question: str, answer: str) -> list[dict[str, str]]:
    """The official prompt, filled in the official order (question, then answer), as one system message."""
    prompt = OBJECT_EXTRACTION_PROMPT.replace("{question}", question).replace("{answer}", answer)
    return [{"role": "system", "content": prompt}]


def parse_object_list(reply: str) -> list[Any]:
    """The reply as JSON; failing that, its last line when the reply contains '["'. ValueError unless a list."""
    try:
        parsed = json.loads(reply)
    except ValueError:
        if '["' not in reply:
            raise ValueError(f"The object list reply is not JSON: {reply!r:.200}") from None
        try:
            parsed = json.loads(reply.strip().split("\n")[-1])
        except ValueError:
            raise ValueError(f"The object list reply is not JSON: {reply!r:.200}") from None
    if not isinstance(parsed, list):
        raise ValueError(f"The object list reply is JSON but not a list: {reply!r:.200}")
    return parsed


def _noun_compounds(doc: Any) -> list[str]:
    compounds: list[str] = []
    current: list[str] = []
    for token in doc:
        if token.tag_ in _NOUN_TAGS:
            current.append(token.lemma_)
        elif current:
            compounds.append(" ".join(current))
            current = []
    if current:
        compounds.append(" ".join(current))
    return compounds


def refine_extracted_objects(objects: Iterable[Any], nlp: Any = OBJECT_HALBENCH_SPACY_MODEL) -> list[str]:
    """The official post-processing of the LLM's objects: spaCy lemmas of "a " + object, double words
    first, else NN* compounds; de-duplicated in order of first appearance."""
    pipeline = None
    refined: list[str] = []
    for obj in objects:
        if pipeline is None:
            pipeline = resolve_spacy_pipeline(nlp)
        doc = spacy_doc(pipeline, f"a {obj}")
        found = _merge_double_words([token.lemma_ for token in doc], keep_single_words=False) or _noun_compounds(doc)
        refined.extend(found)
    return list(dict.fromkeys(refined))


# ---------------------------------------------------------------------------------------------
# Ground truth
# ---------------------------------------------------------------------------------------------


def _image_id(value: Any) -> int:
    if isinstance(value, bool):
        raise ObjectHalBenchDataError(f"A COCO image id must be an integer, got {value!r}.")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ObjectHalBenchDataError(f"A COCO image id must be an integer, got {value!r}.") from None


def coco_ground_truth_from_annotations(
    instances: Sequence[Mapping[str, Any]],
    captions: Sequence[Mapping[str, Any]],
    image_ids: Iterable[Any] | None = None,
    *,
    toolkit: NltkToolkit | None = None,
) -> dict[int, frozenset[str]]:
    """image id -> COCO classes, from the loaded instances_*.json and captions_*.json contents.

    `image_ids` limits the work to those images (each gets an entry, empty if unannotated);
    None takes every image with an instance or caption annotation.
    """
    wanted = None if image_ids is None else {_image_id(image_id) for image_id in image_ids}
    objects: dict[int, set[str]] = {image_id: set() for image_id in wanted} if wanted is not None else {}
    category_names: dict[Any, str] = {}
    for instance_file in instances:
        for category in instance_file.get("categories", []):
            category_names.setdefault(category["id"], category["name"])
    for instance_file in instances:
        for annotation in instance_file.get("annotations", []):
            image_id = annotation["image_id"]
            if wanted is not None and image_id not in wanted:
                continue
            name = category_names.get(annotation["category_id"])
            if name not in COCO_WORD_TO_CLASS:
                raise ObjectHalBenchDataError(
                    f"COCO instance annotation {annotation.get('id')}: category {annotation['category_id']!r} "
                    f"({name!r}) is not a COCO 2014 category."
                )
            objects.setdefault(image_id, set()).add(COCO_WORD_TO_CLASS[name])
    for caption_file in captions:
        for annotation in caption_file.get("annotations", []):
            image_id = annotation["image_id"]
            if wanted is not None and image_id not in wanted:
                continue
            objects.setdefault(image_id, set()).update(
                cls for _, cls in caption_coco_mentions(annotation["caption"], toolkit)
            )
    return {image_id: frozenset(classes) for image_id, classes in objects.items()}


def load_coco_ground_truth(coco_dir: str | Path, image_ids: Iterable[Any] | None = None) -> dict[int, frozenset[str]]:
    """Ground truth from the four COCO 2014 annotation files in `coco_dir` (all four are required)."""
    directory = Path(coco_dir).expanduser()
    paths = {name: directory / name for name in (*COCO_INSTANCE_FILES, *COCO_CAPTION_FILES)}
    missing = [name for name, path in paths.items() if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"COCO annotation file(s) {', '.join(missing)} not found in {str(directory)!r}. Object-HalBench needs all "
            "of "
            f"{', '.join(paths)}: the train and val files of the COCO 2014 annotations "
            "(http://images.cocodataset.org/annotations/annotations_trainval2014.zip)."
        )

    def read(name: str) -> Mapping[str, Any]:
        with open(paths[name], encoding="utf-8") as handle:
            return json.load(handle)

    instances = [read(name) for name in COCO_INSTANCE_FILES]
    captions = [read(name) for name in COCO_CAPTION_FILES]
    return coco_ground_truth_from_annotations(instances, captions, image_ids)


# ---------------------------------------------------------------------------------------------
# Per item
# ---------------------------------------------------------------------------------------------


def extract_answer_objects(
    answer: str,
    *,
    question: str | None,
    judge: Any,
    nlp: Any = OBJECT_HALBENCH_SPACY_MODEL,
    temperature: float = OBJECT_EXTRACTION_TEMPERATURE,
) -> tuple[list[str] | None, str | None]:
    """The gpt extractor: (refined objects, judge reply); (None, reply) when the reply is not a JSON list."""
    if len(answer.strip().split()) <= OBJECT_EXTRACTION_SHORT_ANSWER_WORDS:
        return [], None
    if judge is None:
        raise ValueError("The gpt extractor needs a judge (an object with `complete(messages, *, temperature)`).")
    if not isinstance(question, str):
        raise ObjectHalBenchDataError("The gpt extractor needs the question of each answer (`prompt` or `question`).")
    reply = judge.complete(object_extraction_messages(question, answer), temperature=temperature)
    try:
        objects = parse_object_list(reply)
    except ValueError:
        return None, reply
    return refine_extracted_objects(objects, nlp), reply


def object_halbench_item_result(
    text: str | None,
    ground_truth: Iterable[str],
    *,
    extractor: str = "nltk",
    question: str | None = None,
    judge: Any = None,
    nlp: Any = OBJECT_HALBENCH_SPACY_MODEL,
    temperature: float = OBJECT_EXTRACTION_TEMPERATURE,
    image_id: Any = None,
    question_id: Any = None,
) -> dict[str, Any]:
    """One answer (raw text, None if missing) against its image's ground-truth classes, as a record
    for `object_halbench_metrics`: {"question_id", "image_id", "status" ("scored" | "missing" |
    "extraction_failed"), "mentions" [[word, class]], "hallucinated" [[word, class]],
    "ground_truth" [classes], "covered" [classes], "word_count", "judge_reply", "empty"}."""
    if extractor not in OBJECT_HALBENCH_EXTRACTORS:
        raise ValueError(f"Unknown Object-HalBench extractor {extractor!r}; use one of {OBJECT_HALBENCH_EXTRACTORS}.")
    gt = frozenset(ground_truth)
    record: dict[str, Any] = {
        "question_id": question_id,
        "image_id": image_id,
        "ground_truth": sorted(gt),
        "mentions": [],
        "hallucinated": [],
        "covered": [],
        "word_count": 0,
        "judge_reply": None,
        "empty": False,
    }
    if text is None:
        return {**record, "status": "missing"}
    if not isinstance(text, str):
        raise ObjectHalBenchDataError(
            f"Object-HalBench answer {question_id}: the text must be a string, got {type(text).__name__}."
        )
    answer = clean_answer_text(text)
    record["empty"] = not answer
    record["word_count"] = len(answer.strip().split(" "))
    if extractor == "nltk":
        mentions = caption_coco_mentions(answer)
    else:
        objects, record["judge_reply"] = extract_answer_objects(
            answer, question=question, judge=judge, nlp=nlp, temperature=temperature
        )
        if objects is None:
            return {**record, "status": "extraction_failed"}
        mentions = coco_mentions(objects)
    record.update(chair_record([[word, cls] for word, cls in mentions], gt, object_of=_mention_class))
    return {**record, "status": "scored"}


def _mention_class(mention: Sequence[str]) -> str:
    return mention[1]  # a mention is [word, COCO class]


def object_halbench_metrics(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Totals over `object_halbench_item_result` records.

    Returns {"chair_s", "chair_s_all", "chair_i", "recall" (percent, None when undefined), "n",
    "coco_responses", "hallucinated_responses", "coco_mentions", "hallucinated_mentions",
    "ground_truth_objects", "covered_objects", "avg_word_len", "missing", "empty", "extraction_failures"}.
    """
    counts = ChairCounts()
    empty = words = 0
    missing = extraction_failures = 0
    for record in records:
        status = record["status"]
        if status == "missing":
            missing += 1
            continue
        if status == "extraction_failed":
            extraction_failures += 1
            continue
        if status != "scored":
            raise ObjectHalBenchDataError(f"Not an Object-HalBench item record: {record!r:.200}.")
        counts.add(record)
        empty += record["empty"]
        words += record["word_count"]
    n = counts.responses
    return {
        **counts.metrics(),
        "n": n,
        "coco_responses": counts.responses_with_mentions,
        "hallucinated_responses": counts.hallucinated_responses,
        "coco_mentions": counts.mentions,
        "hallucinated_mentions": counts.hallucinated_mentions,
        "ground_truth_objects": counts.ground_truth,
        "covered_objects": counts.covered,
        "avg_word_len": words / n if n else None,
        "missing": missing,
        "empty": empty,
        "extraction_failures": extraction_failures,
    }


# ---------------------------------------------------------------------------------------------
# Whole runs
# ---------------------------------------------------------------------------------------------


def _answer_fields(answer: Any, position: int) -> tuple[Any, int, str | None, str | None]:
    if not isinstance(answer, Mapping) or "image_id" not in answer:
        raise ObjectHalBenchDataError(
            f"Object-HalBench answer {position}: expected an object with `image_id` and `text`, got {answer!r:.200}."
        )
    if "text" in answer:
        text = answer["text"]
    elif "answer" in answer:
        text = answer["answer"]
    else:
        raise ObjectHalBenchDataError(f"Object-HalBench answer {position}: no `text` (or `answer`) field.")
    question = answer.get("prompt", answer.get("question"))
    return answer.get("question_id", position), _image_id(answer["image_id"]), text, question


def score_object_halbench(
    coco_ground_truth: Mapping[Any, Iterable[str]],
    answers: Iterable[Mapping[str, Any]],
    *,
    extractor: str = "nltk",
    judge: Any = None,
    nlp: Any = OBJECT_HALBENCH_SPACY_MODEL,
    temperature: float = OBJECT_EXTRACTION_TEMPERATURE,
    max_workers: int = 8,
) -> dict[str, Any]:
    """Score answers ({"question_id", "image_id", "text"[, "prompt"]}) against image id -> COCO classes.

    extractor "nltk" is the rule path; "gpt" needs `judge` (`judge.complete(messages, *,
    temperature) -> str`, called from up to `max_workers` threads) and the spaCy pipeline `nlp`.
    Returns the keys of `object_halbench_metrics` plus "extractor".
    """
    if extractor not in OBJECT_HALBENCH_EXTRACTORS:
        raise ValueError(f"Unknown Object-HalBench extractor {extractor!r}; use one of {OBJECT_HALBENCH_EXTRACTORS}.")
    if extractor == "gpt" and judge is None:
        raise ValueError("The gpt extractor needs a judge (an object with `complete(messages, *, temperature)`).")
    ground_truth = {_image_id(image_id): frozenset(classes) for image_id, classes in coco_ground_truth.items()}
    fields = [_answer_fields(answer, position) for position, answer in enumerate(answers)]
    first_answer: dict[Any, int] = {}
    for position, (question_id, _, _, _) in enumerate(fields):
        key = question_id if isinstance(question_id, (int, str)) else repr(question_id)
        if key in first_answer:
            raise ObjectHalBenchDataError(
                f"Object-HalBench answers: question_id {question_id} appears twice (answers "
                f"{first_answer[key]} and {position}); score each question once: remove the "
                "repeat."
            )
        first_answer[key] = position
    unknown = sorted({image_id for _, image_id, _, _ in fields if image_id not in ground_truth})
    if unknown:
        raise ObjectHalBenchDataError(
            f"No COCO ground truth for image id(s) {unknown[:10]}{' ...' if len(unknown) > 10 else ''}."
        )
    if extractor == "gpt":
        missing_questions = [
            question_id
            for question_id, _, text, question in fields
            if text is not None and not isinstance(question, str)
        ]
        if missing_questions:
            raise ObjectHalBenchDataError(
                "The gpt extractor needs each answer's question (`prompt` or `question`); missing for "
                f"{missing_questions[:10]}."
            )

    def score(field: tuple[Any, int, str | None, str | None]) -> dict[str, Any]:
        question_id, image_id, text, question = field
        return object_halbench_item_result(
            text,
            ground_truth[image_id],
            extractor=extractor,
            question=question,
            judge=judge,
            nlp=nlp,
            temperature=temperature,
            image_id=image_id,
            question_id=question_id,
        )

    run: Callable[[], list[dict[str, Any]]]
    if extractor == "gpt" and max_workers > 1 and len(fields) > 1:

        def run() -> list[dict[str, Any]]:
            with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="object-halbench") as pool:
                return list(pool.map(score, fields))
    else:

        def run() -> list[dict[str, Any]]:
            return [score(field) for field in fields]

    result = object_halbench_metrics(run())
    result["extractor"] = extractor
    return result


def load_object_halbench_answers(path: str | Path) -> list[dict[str, Any]]:
    """The answers jsonl (one {"question_id", "image_id", "text", ...} object per line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Object-HalBench answers file {str(path)!r} not found.")
    answers = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                answers.append(json.loads(line))
            except ValueError as error:
                raise ObjectHalBenchDataError(f"{str(path)!r} line {line_number} is not JSON: {error}") from None
    return answers


def score_object_halbench_files(coco_dir: str | Path, answers_path: str | Path, **kwargs: Any) -> dict[str, Any]:
    """`score_object_halbench` with the ground truth of the answers' images read from the COCO 2014 files in
    `coco_dir`."""
    answers = load_object_halbench_answers(answers_path)
    image_ids = {_answer_fields(answer, position)[1] for position, answer in enumerate(answers)}
    return score_object_halbench(load_coco_ground_truth(coco_dir, image_ids), answers, **kwargs)
