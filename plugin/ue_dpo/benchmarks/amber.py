"""AMBER scoring with the semantics of the official `inference.py` (github.com/junyangwang0410/AMBER).

Generative items (annotation `type` "generative"): nouns are the WordNet lemmas of the tokens
`nltk.pos_tag` tags NN*, with no lower-casing; only nouns of the vocabulary (relation.json keys and
their association words) count. Per noun, in the official order:

1. a global safe word (safe_words.txt) is counted as a mention but never flagged;
2. an exact hit among the item's safe words (association words of each truth object, then the
   truth objects) covers that truth object and is not flagged;
3. otherwise an exact hit among the hallucination words marks that hallu object as mentioned; then
   the first hallucination word the spaCy similarity puts above the threshold (0.8) is marked too;
4. then the first safe word above the threshold covers its truth object and clears the noun;
   a noun no safe word rescues is flagged as a hallucination.

CHAIR = flagged / counted nouns, Cover = covered truth objects / truth objects, Hal = share of
responses with a flag, Cog = mentioned hallu objects / hallu objects.

Discriminative items: the answer counts as "Yes"/"No" only when it is exactly that string (the
official comparison does not strip or lower-case); "No" is the positive class.

Every count starts as in the official `data/metrics.txt` (numerators 0, denominators 0.001) once
per run, items are added in order, and every metric is `round(x * 100, 1)`; F1 is computed from the
rounded precision and recall with the official epsilons (0.001 for existence, 0.0001 elsewhere).
The pooled attribute numbers add the state, number and action counters, so their denominators
carry 3 x 0.001, as in the official code. AMBER Score = (100 - CHAIR + overall F1) / 2.

On top of the official numbers, every group reports `n` (items scored), `missing` (annotation
items with no response, or a response of None: not scored) and, for the discriminative groups,
`unparsed` (answers that are neither "Yes" nor "No" under the parse mode; the official code scores
them as wrong answers, and so do we, but they are counted). The generative group also reports
`empty`: responses that are empty or only whitespace. The official code scores them as captions
without nouns (hallucination-free in Hal, nothing covered in Cover and Cog), and so do we: they stay
in every denominator, and are counted. An empty yes/no answer is `unparsed`.
"""

from __future__ import annotations

import json
import re
import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ue_dpo.benchmarks.nlp import (
    AMBER_SPACY_MODEL,
    NltkToolkit,
    nltk_toolkit,
    resolve_spacy_pipeline,
    spacy_doc,
)

AMBER_GENERATIVE_PROMPT = "Describe this image."
AMBER_SIMILARITY_THRESHOLD = 0.8
AMBER_COUNTER_START = 0.001  # every *_num counter of data/metrics.txt
AMBER_F1_EPSILON = 0.0001
AMBER_EXISTENCE_F1_EPSILON = 0.001
AMBER_DATA_FILES = ("annotations.json", "relation.json", "safe_words.txt")
AMBER_GENERATIVE_TYPE = "generative"
# annotation type -> counter group of the official code; every type but the four named ones goes
# to the official code's relation ("asso") counters, which only these two types reach in the data.
AMBER_DISCRIMINATIVE_TYPES: dict[str, str] = {
    "discriminative-hallucination": "existence",
    "discriminative-attribute-state": "state",
    "discriminative-attribute-number": "number",
    "discriminative-attribute-action": "action",
    "discriminative-relation": "relation",
    "relation": "relation",
}
AMBER_ATTRIBUTE_GROUPS = ("state", "number", "action")
AMBER_COUNTER_GROUPS = ("existence", "state", "number", "action", "relation")
AMBER_ANSWER_PARSE_MODES = ("exact", "lenient")

_LENIENT_FIRST_WORD = re.compile(r"[^a-z]*([a-z]+)")


class AmberDataError(ValueError):
    """AMBER annotations, vocabulary or responses that cannot be scored."""


# ---------------------------------------------------------------------------------------------
# Reference data
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AmberVocabulary:
    """relation.json and safe_words.txt: association words per object, the vocabulary, the global safe words."""

    association: Mapping[str, tuple[str, ...]]
    words: frozenset[str]
    global_safe_words: frozenset[str]

    @classmethod
    def from_data(cls, relation: Mapping[str, Sequence[str]], safe_words: Iterable[str]) -> AmberVocabulary:
        if not isinstance(relation, Mapping):
            raise AmberDataError(
                "relation.json must hold an object mapping each object to its association words, got "
                f"{type(relation).__name__}."
            )
        association: dict[str, tuple[str, ...]] = {}
        for obj, related in relation.items():
            if not isinstance(related, (list, tuple)) or not all(isinstance(word, str) for word in related):
                raise AmberDataError(
                    f"relation.json: the association words of {obj!r} must be a list of strings, got {related!r}."
                )
            association[obj] = tuple(related)
        words = frozenset(association) | frozenset(word for related in association.values() for word in related)
        safe = list(safe_words)
        if not all(isinstance(word, str) for word in safe):
            raise AmberDataError("safe_words must be strings.")
        return cls(association=association, words=words, global_safe_words=frozenset(safe))

    def associated(self, obj: str, *, item_id: Any = None) -> tuple[str, ...]:
        try:
            return self.association[obj]
        except KeyError:
            raise AmberDataError(f"AMBER item {item_id}: object {obj!r} is not a key of relation.json.") from None


@dataclass(frozen=True)
class AmberReference:
    """The annotations by id plus the vocabulary: everything an item needs besides the response."""

    entries: Mapping[int, Mapping[str, Any]]
    vocabulary: AmberVocabulary

    def entry(self, item_id: Any) -> Mapping[str, Any]:
        key = _item_id(item_id)
        try:
            return self.entries[key]
        except KeyError:
            ids = sorted(self.entries)
            span = f"{ids[0]}..{ids[-1]}" if ids else "none"
            raise AmberDataError(
                f"Response id {key} is not in the AMBER annotations (annotation ids: {span})."
            ) from None


def _item_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise AmberDataError(f"An AMBER id must be an integer, got {value!r}.")
    try:
        return int(value)
    except ValueError:
        raise AmberDataError(f"An AMBER id must be an integer, got {value!r}.") from None


def _checked_entry(entry: Any, position: int) -> Mapping[str, Any]:
    if not isinstance(entry, Mapping) or "type" not in entry or "truth" not in entry:
        raise AmberDataError(
            f"AMBER annotation {position}: expected an object with `type` and `truth`, got {entry!r:.200}."
        )
    kind = entry["type"]
    if kind == AMBER_GENERATIVE_TYPE:
        for key in ("truth", "hallu"):
            value = entry.get(key)
            if not isinstance(value, list) or not all(isinstance(word, str) for word in value):
                raise AmberDataError(
                    f"AMBER annotation {position}: a generative item needs `{key}` as a list of object names, got "
                    f"{value!r:.200}."
                )
    elif kind in AMBER_DISCRIMINATIVE_TYPES:
        if entry["truth"] not in ("yes", "no"):
            raise AmberDataError(
                f"AMBER annotation {position}: a discriminative item's `truth` must be 'yes' or 'no', got "
                f"{entry['truth']!r}."
            )
    else:
        known = ", ".join([AMBER_GENERATIVE_TYPE, *AMBER_DISCRIMINATIVE_TYPES])
        raise AmberDataError(f"AMBER annotation {position}: unknown type {kind!r} (known: {known}).")
    return entry


def amber_reference(
    annotations: Sequence[Mapping[str, Any]], relation: Mapping[str, Sequence[str]], safe_words: Iterable[str]
) -> AmberReference:
    """Index the annotations by their `id` (the official list position + 1 when an entry has none)."""
    if not isinstance(annotations, Sequence) or isinstance(annotations, (str, bytes)):
        raise AmberDataError(f"annotations.json must hold a list of items, got {type(annotations).__name__}.")
    entries: dict[int, Mapping[str, Any]] = {}
    for position, entry in enumerate(annotations):
        entry = _checked_entry(entry, position)
        item_id = _item_id(entry.get("id", position + 1))
        if item_id in entries:
            raise AmberDataError(f"AMBER annotations: id {item_id} appears twice.")
        entries[item_id] = entry
    return AmberReference(entries=entries, vocabulary=AmberVocabulary.from_data(relation, safe_words))


def _data_file(data_dir: Path, name: str) -> Path:
    path = data_dir / name
    if not path.is_file():
        raise FileNotFoundError(
            f"AMBER file {name!r} not found in {str(data_dir)!r}. It comes from the `data/` folder of the "
            "AMBER repository (https://github.com/junyangwang0410/AMBER); point the data directory at a copy of that "
            "folder."
        )
    return path


def read_safe_words(path: str | Path) -> list[str]:
    """One word per line, each line without its newline only (as the official reader keeps it)."""
    with open(path, encoding="utf-8") as handle:
        return [line.removesuffix("\n") for line in handle]


_REFERENCE_CACHE: dict[Path, AmberReference] = {}
_REFERENCE_LOCK = threading.Lock()


def load_amber_reference(data_dir: str | Path) -> AmberReference:
    """annotations.json, relation.json and safe_words.txt of an AMBER `data/` folder, read once per folder."""
    directory = Path(data_dir).expanduser().resolve()
    with _REFERENCE_LOCK:
        if directory not in _REFERENCE_CACHE:
            paths = {name: _data_file(directory, name) for name in AMBER_DATA_FILES}
            with open(paths["annotations.json"], encoding="utf-8") as handle:
                annotations = json.load(handle)
            with open(paths["relation.json"], encoding="utf-8") as handle:
                relation = json.load(handle)
            safe_words = read_safe_words(paths["safe_words.txt"])
            _REFERENCE_CACHE[directory] = amber_reference(annotations, relation, safe_words)
        return _REFERENCE_CACHE[directory]


# ---------------------------------------------------------------------------------------------
# Per item
# ---------------------------------------------------------------------------------------------


def amber_nouns(text: str, toolkit: NltkToolkit | None = None) -> list[str]:
    """WordNet lemmas of the tokens tagged NN*, in order and case as written (the official extract_nouns)."""
    toolkit = toolkit or nltk_toolkit()
    tagged = toolkit.pos_tag(toolkit.word_tokenize(text))
    return [toolkit.lemmatize(word) for word, tag in tagged if tag.startswith("NN")]


_DOC_CACHES: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()
_DOC_CACHE_LOCK = threading.Lock()


def _word_doc(pipeline: Any, word: str) -> Any:
    # The official code runs the pipeline on both words for every comparison; a word's Doc does
    # not change, so it is made once per pipeline.
    with _DOC_CACHE_LOCK:
        try:
            cache = _DOC_CACHES.setdefault(pipeline, {})
        except TypeError:
            cache = None
        doc = cache.get(word) if cache is not None else None
    if doc is None:
        doc = spacy_doc(pipeline, word)
        if cache is not None:
            with _DOC_CACHE_LOCK:
                cache[word] = doc
    return doc


def amber_words_similar(pipeline: Any, word: str, other: str, threshold: float = AMBER_SIMILARITY_THRESHOLD) -> bool:
    """`nlp(word).similarity(nlp(other)) > threshold`, as the official check_synonyms_word."""
    return _word_doc(pipeline, word).similarity(_word_doc(pipeline, other)) > threshold


def amber_generative_counts(
    response: str,
    truth: Sequence[str],
    hallu: Sequence[str],
    vocabulary: AmberVocabulary,
    *,
    nlp: Any = AMBER_SPACY_MODEL,
    similarity_threshold: float = AMBER_SIMILARITY_THRESHOLD,
    item_id: Any = None,
    toolkit: NltkToolkit | None = None,
) -> dict[str, Any]:
    """The official per-response counts of the generative task (see the module docstring for the rules)."""
    # Candidate words in the official order: association words of each object, then the objects;
    # each candidate points to the object it stands for.
    safe_candidates = [
        (word, index) for index, obj in enumerate(truth) for word in vocabulary.associated(obj, item_id=item_id)
    ]
    safe_candidates += [(obj, index) for index, obj in enumerate(truth)]
    hallu_candidates = [
        (word, index) for index, obj in enumerate(hallu) for word in vocabulary.associated(obj, item_id=item_id)
    ]
    hallu_candidates += [(obj, index) for index, obj in enumerate(hallu)]

    mentions = [noun for noun in amber_nouns(response, toolkit) if noun in vocabulary.words]
    covered_truth = [False] * len(truth)
    mentioned_hallu = [False] * len(hallu)
    hallucinated: list[str] = []
    pipeline = None
    for noun in mentions:
        if noun in vocabulary.global_safe_words:
            continue
        exact_safe = next((index for word, index in safe_candidates if word == noun), None)
        if exact_safe is not None:
            covered_truth[exact_safe] = True
            continue
        exact_hallu = next((index for word, index in hallu_candidates if word == noun), None)
        if exact_hallu is not None:
            mentioned_hallu[exact_hallu] = True
        if pipeline is None:
            pipeline = resolve_spacy_pipeline(nlp)
        similar_hallu = next(
            (
                index
                for word, index in hallu_candidates
                if amber_words_similar(pipeline, noun, word, similarity_threshold)
            ),
            None,
        )
        if similar_hallu is not None:
            mentioned_hallu[similar_hallu] = True
        similar_safe = next(
            (
                index
                for word, index in safe_candidates
                if amber_words_similar(pipeline, noun, word, similarity_threshold)
            ),
            None,
        )
        if similar_safe is not None:
            covered_truth[similar_safe] = True
            continue
        hallucinated.append(noun)

    return {
        "mentions": len(mentions),
        "hallucinated_mentions": len(hallucinated),
        "truth_objects": len(truth),
        "covered_truth_objects": sum(covered_truth),
        "hallu_objects": len(hallu),
        "mentioned_hallu_objects": sum(mentioned_hallu),
        "hallucination_free": not hallucinated,
        "counted_nouns": mentions,
        "hallucinated_nouns": hallucinated,
    }


def parse_amber_answer(response: str, parse: str = "exact") -> str | None:
    """ "Yes", "No" or None (unparsed).

    exact (official): the response must be exactly "Yes" or "No" - no stripping, no case folding.
    lenient (opt-in, not comparable with published numbers): the first word, after leading
    whitespace and punctuation and case-insensitively, must be "yes" or "no"; so "No." and
    "yes, there is" parse, while "Not really" and "The answer is no" do not.
    """
    if parse == "exact":
        return response if response in ("Yes", "No") else None
    if parse == "lenient":
        match = _LENIENT_FIRST_WORD.match(response.lower())
        if match and match.group(1) in ("yes", "no"):
            return match.group(1).capitalize()
        return None
    raise ValueError(f"Unknown AMBER answer parse mode {parse!r}; use one of {AMBER_ANSWER_PARSE_MODES}.")


def amber_item_result(
    entry: Mapping[str, Any],
    response: str | None,
    *,
    vocabulary: AmberVocabulary,
    nlp: Any = AMBER_SPACY_MODEL,
    parse: str = "exact",
    similarity_threshold: float = AMBER_SIMILARITY_THRESHOLD,
) -> dict[str, Any]:
    """One annotation entry and its response (None: no response) as a record for `amber_metrics`.

    Records: {"id", "task": "generative", "missing", "empty", + the counts of amber_generative_counts} or
    {"id", "task": "discriminative", "group", "truth", "answer", "unparsed", "missing"}.
    """
    if parse not in AMBER_ANSWER_PARSE_MODES:
        raise ValueError(f"Unknown AMBER answer parse mode {parse!r}; use one of {AMBER_ANSWER_PARSE_MODES}.")
    entry = _checked_entry(entry, entry.get("id") if isinstance(entry, Mapping) else None)
    item_id = entry.get("id")
    if response is not None and not isinstance(response, str):
        raise AmberDataError(f"AMBER item {item_id}: the response must be a string, got {type(response).__name__}.")
    if entry["type"] == AMBER_GENERATIVE_TYPE:
        record: dict[str, Any] = {
            "id": item_id,
            "task": "generative",
            "missing": response is None,
            "empty": response is not None and not response.strip(),
        }
        if response is not None:
            record.update(
                amber_generative_counts(
                    response,
                    entry["truth"],
                    entry["hallu"],
                    vocabulary,
                    nlp=nlp,
                    similarity_threshold=similarity_threshold,
                    item_id=item_id,
                )
            )
        return record
    answer = parse_amber_answer(response, parse) if response is not None else None
    return {
        "id": item_id,
        "task": "discriminative",
        "group": AMBER_DISCRIMINATIVE_TYPES[entry["type"]],
        "truth": entry["truth"],
        "answer": answer,
        "unparsed": response is not None and answer is None,
        "missing": response is None,
    }


# ---------------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------------


class _QuestionCounters:
    """The official discriminative counters of one group; denominators start at 0.001."""

    def __init__(self) -> None:
        self.questions = AMBER_COUNTER_START
        self.correct = 0
        self.truth_no = AMBER_COUNTER_START
        self.answered_no = AMBER_COUNTER_START
        self.true_no = 0  # truth "no" answered "No": the numerator of both precision and recall
        self.n = 0
        self.unparsed = 0
        self.missing = 0

    def add(self, record: Mapping[str, Any]) -> None:
        if record["missing"]:
            self.missing += 1
            return
        truth, answer = record["truth"], record["answer"]
        self.n += 1
        self.unparsed += bool(record["unparsed"])
        self.questions += 1
        if truth == "no":
            self.truth_no += 1
        if answer == "No":
            self.answered_no += 1
        if truth == "yes" and answer == "Yes" or truth == "no" and answer == "No":
            self.correct += 1
        if truth == "no" and answer == "No":
            self.true_no += 1


def _qa_metrics(
    questions: float, correct: int, truth_no: float, answered_no: float, true_no: int, f1_epsilon: float
) -> dict[str, float]:
    accuracy = round(correct / questions * 100, 1)
    precision = round(true_no / answered_no * 100, 1)
    recall = round(true_no / truth_no * 100, 1)
    f1 = round(2 * (precision / 100) * (recall / 100) / ((precision / 100) + (recall / 100) + f1_epsilon) * 100, 1)
    return {"Accuracy": accuracy, "Precision": precision, "Recall": recall, "F1": f1}


def _qa_group(counters: Sequence[_QuestionCounters], f1_epsilon: float) -> dict[str, Any]:
    n = sum(c.n for c in counters)
    result: dict[str, Any]
    if n == 0:
        result = {"Accuracy": None, "Precision": None, "Recall": None, "F1": None}
    else:

        def pooled(attribute: str) -> float:
            total = getattr(counters[0], attribute)
            for counter in counters[1:]:
                total = total + getattr(counter, attribute)
            return total

        result = _qa_metrics(
            pooled("questions"),
            pooled("correct"),
            pooled("truth_no"),
            pooled("answered_no"),
            pooled("true_no"),
            f1_epsilon,
        )
    result.update(n=n, unparsed=sum(c.unparsed for c in counters), missing=sum(c.missing for c in counters))
    return result


def amber_metrics(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Aggregate `amber_item_result` records, in order, into the official AMBER numbers (percent)."""
    counted_nouns = AMBER_COUNTER_START
    hallucinated_nouns = 0
    truth_objects = AMBER_COUNTER_START
    covered_truth = 0
    hallu_objects = AMBER_COUNTER_START
    mentioned_hallu = 0
    responses = AMBER_COUNTER_START
    hallucination_free = 0
    generative_n = generative_missing = generative_empty = 0
    overall = _QuestionCounters()
    groups = {name: _QuestionCounters() for name in AMBER_COUNTER_GROUPS}

    for record in records:
        if record["task"] == "generative":
            if record["missing"]:
                generative_missing += 1
                continue
            generative_n += 1
            generative_empty += record["empty"]
            hallucinated_nouns += record["hallucinated_mentions"]
            counted_nouns += record["mentions"]
            covered_truth += record["covered_truth_objects"]
            truth_objects += record["truth_objects"]
            mentioned_hallu += record["mentioned_hallu_objects"]
            hallu_objects += record["hallu_objects"]
            if record["hallucination_free"]:
                hallucination_free += 1
            responses += 1
        elif record["task"] == "discriminative":
            overall.add(record)
            groups[record["group"]].add(record)
        else:
            raise AmberDataError(f"Not an AMBER item record: {record!r:.200}.")

    generative: dict[str, Any]
    if generative_n == 0:
        generative = {"CHAIR": None, "Cover": None, "Hal": None, "Cog": None}
    else:
        generative = {
            "CHAIR": round(hallucinated_nouns / counted_nouns * 100, 1),
            "Cover": round(covered_truth / truth_objects * 100, 1),
            "Hal": round(100 - hallucination_free / responses * 100, 1),
            "Cog": round(mentioned_hallu / hallu_objects * 100, 1),
        }
    generative.update(n=generative_n, missing=generative_missing, empty=generative_empty)

    discriminative = {
        "overall": _qa_group([overall], AMBER_F1_EPSILON),
        "existence": _qa_group([groups["existence"]], AMBER_EXISTENCE_F1_EPSILON),
        "attribute": _qa_group([groups[name] for name in AMBER_ATTRIBUTE_GROUPS], AMBER_F1_EPSILON),
        "relation": _qa_group([groups["relation"]], AMBER_F1_EPSILON),
        "state": _qa_group([groups["state"]], AMBER_F1_EPSILON),
        "number": _qa_group([groups["number"]], AMBER_F1_EPSILON),
        "action": _qa_group([groups["action"]], AMBER_F1_EPSILON),
    }
    chair, f1 = generative["CHAIR"], discriminative["overall"]["F1"]
    # CHAIR and F1 have one decimal, so the mean has at most two; rounding drops float noise only.
    amber_score = None if chair is None or f1 is None else round((100 - chair + f1) / 2, 2)
    return {"generative": generative, "discriminative": discriminative, "amber_score": amber_score}


# ---------------------------------------------------------------------------------------------
# Whole runs
# ---------------------------------------------------------------------------------------------


def _checked_responses(responses: Iterable[Mapping[str, Any]]) -> dict[int, str | None]:
    by_id: dict[int, str | None] = {}
    for position, item in enumerate(responses):
        if not isinstance(item, Mapping) or "id" not in item or "response" not in item:
            raise AmberDataError(
                f"AMBER response {position}: expected an object with `id` and `response`, got {item!r:.200}."
            )
        item_id = _item_id(item["id"])
        if item_id in by_id:
            raise AmberDataError(f"AMBER responses: id {item_id} appears twice.")
        by_id[item_id] = item["response"]
    return by_id


def score_amber_reference(
    reference: AmberReference,
    responses: Iterable[Mapping[str, Any]],
    *,
    nlp: Any = AMBER_SPACY_MODEL,
    parse: str = "exact",
    similarity_threshold: float = AMBER_SIMILARITY_THRESHOLD,
) -> dict[str, Any]:
    """Score `[{"id", "response"}]` against a loaded reference (items in response order, then the unanswered ones)."""
    by_id = _checked_responses(responses)
    for item_id in by_id:
        reference.entry(item_id)
    answered = [(reference.entries[item_id], response) for item_id, response in by_id.items()]
    unanswered = [(entry, None) for item_id, entry in reference.entries.items() if item_id not in by_id]
    records = [
        amber_item_result(
            entry,
            response,
            vocabulary=reference.vocabulary,
            nlp=nlp,
            parse=parse,
            similarity_threshold=similarity_threshold,
        )
        for entry, response in answered + unanswered
    ]
    result = amber_metrics(records)
    result["parse"] = parse
    return result


def score_amber(
    annotations: Sequence[Mapping[str, Any]],
    relation: Mapping[str, Sequence[str]],
    safe_words: Iterable[str],
    responses: Iterable[Mapping[str, Any]],
    *,
    nlp: Any = AMBER_SPACY_MODEL,
    parse: str = "exact",
    similarity_threshold: float = AMBER_SIMILARITY_THRESHOLD,
) -> dict[str, Any]:
    """Score AMBER responses given the contents of annotations.json, relation.json and safe_words.txt.

    Returns {"generative": {"CHAIR", "Cover", "Hal", "Cog", "n", "missing", "empty"},
    "discriminative": {group: {"Accuracy", "Precision", "Recall", "F1", "n", "unparsed", "missing"}}
    for groups overall, existence, attribute, relation (and state, number, action),
    "amber_score", "parse"}; metrics are percentages, None for a group with no scored item.
    `nlp` is a spaCy pipeline or its name (default en_core_web_lg, loaded only if needed).
    """
    reference = amber_reference(annotations, relation, safe_words)
    return score_amber_reference(reference, responses, nlp=nlp, parse=parse, similarity_threshold=similarity_threshold)


def load_amber_responses(path: str | Path) -> list[dict[str, Any]]:
    """A JSON list of {"id", "response"} (or the same objects one per line in a .jsonl file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"AMBER responses file {str(path)!r} not found.")
    try:
        with open(path, encoding="utf-8") as handle:
            if path.suffix == ".jsonl":
                items = [json.loads(line) for line in handle if line.strip()]
            else:
                items = json.load(handle)
    except ValueError as error:  # json.JSONDecodeError and UnicodeDecodeError
        raise AmberDataError(
            f"AMBER responses file {str(path)!r} is not UTF-8 JSON ({error}); it must hold AMBER's "
            f"format, a JSON list of {{'id', 'response'}} objects (or one object per line in a .jsonl file)."
        ) from None
    if not isinstance(items, list):
        raise AmberDataError(f"{str(path)!r}: expected a JSON list of {{'id', 'response'}} objects.")
    return items


def score_amber_files(data_dir: str | Path, responses_path: str | Path, **kwargs: Any) -> dict[str, Any]:
    """`score_amber` on the official files of `data_dir` (annotations.json, relation.json, safe_words.txt)."""
    reference = load_amber_reference(data_dir)
    return score_amber_reference(reference, load_amber_responses(responses_path), **kwargs)
