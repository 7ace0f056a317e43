"""Test-form NLP resources for the AMBER and Object-HalBench tests, built in the real formats and
installed through the standard mechanisms, so the scorers run their production loading code:

* an NLTK data directory (prepended to `nltk.data.path`, as `NLTK_DATA` would) holding
  - `tokenizers/punkt_tab/english/` with the four Punkt parameter files,
  - `taggers/averaged_perceptron_tagger_eng/` with the weights / tagdict / classes JSON files,
    whose tagdict tags every fixture word (an unknown word falls to the bias weight: NN),
  - `corpora/wordnet/` with lexnames, index.*, data.* (byte offsets included), *.exc and
    index.sense covering the fixture nouns, so `WordNetLemmatizer` lemmatises them for real;
* a spaCy pipeline saved with `nlp.to_disk` and loaded with `spacy.load(path)`: a blank English
  pipeline with a small vectors table (similarities are real cosines) and an `attribute_ruler`
  giving the fixture tokens their Penn tags and lemmas.

The vocabularies below are the union of what tests/test_amber.py and tests/test_object_halbench.py
use; the resources are built once per process in a temporary directory.
"""

from __future__ import annotations

import atexit
import json
import math
import shutil
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# Penn Treebank tags of every token the AMBER fixtures send through nltk.pos_tag (case as written).
PENN_TAGS: dict[str, str] = {
    "A": "DT",
    "a": "DT",
    "The": "DT",
    "the": "DT",
    "Two": "CD",
    "two": "CD",
    "There": "EX",
    "and": "CC",
    "on": "IN",
    "near": "IN",
    "by": "IN",
    "under": "IN",
    "past": "IN",
    "is": "VBZ",
    "are": "VBP",
    "sits": "VBZ",
    "stands": "VBZ",
    "flows": "VBZ",
    "sleep": "VBP",
    ".": ".",
    ",": ",",
    "puppy": "NN",
    "lawn": "NN",
    "cat": "NN",
    "dog": "NN",
    "man": "NN",
    "river": "NN",
    "glasses": "NNS",
    "pond": "NN",
    "light": "NN",
    "Dogs": "NNS",
    "grass": "NN",
    "kitten": "NN",
    "lake": "NN",
    "sky": "NN",
    "tree": "NN",
    "car": "NN",
}

# WordNet noun lemmas (index.noun); plural forms reach them through the morphy rules ("dogs" ->
# "dog", "glasses" -> "glass", "tracks" -> "track") or noun.exc ("mice" -> "mouse").
WORDNET_NOUNS = (
    "dog",
    "cat",
    "puppy",
    "kitten",
    "lawn",
    "grass",
    "lake",
    "water",
    "river",
    "pond",
    "man",
    "woman",
    "person",
    "glass",
    "glasses",
    "cup",
    "light",
    "sky",
    "tree",
    "car",
    "toilet",
    "seat",
    "sink",
    "tie",
    "bow",
    "train",
    "track",
    "passenger",
    "baby",
    "ball",
    "frisbee",
    "wine",
    "table",
    "teddy",
    "bear",
    "mouse",
    "phone",
    "cell",
)
WORDNET_NOUN_EXCEPTIONS = {"mice": "mouse"}

# spaCy vectors: dimensions stand for dog, cat, water, plant, human, vehicle, tableware, sky and
# two spare axes. Same-axis words have cosine 1; river is cos 0.9 from lake/water; pond is
# cos 0.6 from lake/water and 0 from everything else; tree is cos 0.5 from grass/lawn.
SPACY_VECTORS: dict[str, tuple[float, ...]] = {
    "dog": (1, 0, 0, 0, 0, 0, 0, 0, 0, 0),
    "puppy": (1, 0, 0, 0, 0, 0, 0, 0, 0, 0),
    "cat": (0, 1, 0, 0, 0, 0, 0, 0, 0, 0),
    "kitten": (0, 1, 0, 0, 0, 0, 0, 0, 0, 0),
    "lake": (0, 0, 1, 0, 0, 0, 0, 0, 0, 0),
    "water": (0, 0, 1, 0, 0, 0, 0, 0, 0, 0),
    "river": (0, 0, 0.9, 0, 0, 0, 0, 0, math.sqrt(1 - 0.81), 0),
    "pond": (0, 0, 0.6, 0, 0, 0, 0, 0, 0, 0.8),
    "grass": (0, 0, 0, 1, 0, 0, 0, 0, 0, 0),
    "lawn": (0, 0, 0, 1, 0, 0, 0, 0, 0, 0),
    "tree": (0, 0, 0, 0.5, 0, 0, 0, 0, math.sqrt(1 - 0.25), 0),
    "person": (0, 0, 0, 0, 1, 0, 0, 0, 0, 0),
    "man": (0, 0, 0, 0, 1, 0, 0, 0, 0, 0),
    "woman": (0, 0, 0, 0, 1, 0, 0, 0, 0, 0),
    "car": (0, 0, 0, 0, 0, 1, 0, 0, 0, 0),
    "glass": (0, 0, 0, 0, 0, 0, 1, 0, 0, 0),
    "cup": (0, 0, 0, 0, 0, 0, 1, 0, 0, 0),
    "sky": (0, 0, 0, 0, 0, 0, 0, 1, 0, 0),
    "light": (0, 0, 0, 0, 0, 0, 0, 1, 0, 0),
}

# Penn tag and lemma the spaCy pipeline gives each token of the Object-HalBench gpt fixtures.
SPACY_TOKEN_ATTRIBUTES: dict[str, tuple[str, str]] = {
    "a": ("DT", "a"),
    "puppy": ("NN", "puppy"),
    "tennis": ("NN", "tennis"),
    "ball": ("NN", "ball"),
    "grass": ("NN", "grass"),
    "man": ("NN", "man"),
    "wine": ("NN", "wine"),
    "glasses": ("NNS", "glass"),
    "cell": ("NN", "cell"),
    "phones": ("NNS", "phone"),
    "table": ("NN", "table"),
    "toilet": ("NN", "toilet"),
    "seat": ("NN", "seat"),
    "dog": ("NN", "dog"),
    "red": ("JJ", "red"),
    "kite": ("NN", "kite"),
    "string": ("NN", "string"),
}

_LEXNAMES = ("adj.all\t3", "adj.pert\t3", "adv.all\t4", "noun.Tops\t1")
_NOUN_LEXFILE = 3


def write_punkt_tab(nltk_dir: Path) -> None:
    model = nltk_dir / "tokenizers" / "punkt_tab" / "english"
    model.mkdir(parents=True, exist_ok=True)
    (model / "abbrev_types.txt").write_text("dr\nmr\nmrs\n", encoding="utf-8")
    (model / "collocations.tab").write_text("", encoding="utf-8")
    (model / "sent_starters.txt").write_text("the\nthere\n", encoding="utf-8")
    (model / "ortho_context.tab").write_text("the\t2\n", encoding="utf-8")


def write_perceptron_tagger(nltk_dir: Path, tags: Mapping[str, str]) -> None:
    model = nltk_dir / "taggers" / "averaged_perceptron_tagger_eng"
    model.mkdir(parents=True, exist_ok=True)
    classes = sorted(set(tags.values()) | {"NN"})
    files = {
        "weights": {"bias": {"NN": 1.0}},
        "tagdict": dict(tags),
        "classes": classes,
    }
    for kind, content in files.items():
        (model / f"averaged_perceptron_tagger_eng.{kind}.json").write_text(json.dumps(content), encoding="utf-8")


def write_wordnet(nltk_dir: Path, nouns: Iterable[str], noun_exceptions: Mapping[str, str]) -> None:
    corpus = nltk_dir / "corpora" / "wordnet"
    corpus.mkdir(parents=True, exist_ok=True)
    header = "  1 Test WordNet for the ue-dpo scorer tests, in the WordNet 3.0 database file format.  \n"
    (corpus / "lexnames").write_text(
        "".join(f"{i:02d}\t{entry}\n" for i, entry in enumerate(_LEXNAMES)), encoding="utf-8"
    )

    data_noun = header.encode("utf-8")
    index_lines = []
    for lemma in sorted(set(nouns)):
        offset = len(data_noun)
        data_noun += f"{offset:08d} {_NOUN_LEXFILE:02d} n 01 {lemma} 0 000 | a fixture noun  \n".encode()
        index_lines.append(f"{lemma} n 1 0 1 0 {offset:08d}  \n")
    (corpus / "data.noun").write_bytes(data_noun)
    (corpus / "index.noun").write_text(header + "".join(index_lines), encoding="utf-8")
    for pos in ("verb", "adj", "adv"):
        (corpus / f"data.{pos}").write_text(header, encoding="utf-8")
        (corpus / f"index.{pos}").write_text(header, encoding="utf-8")
        (corpus / f"{pos}.exc").write_text("", encoding="utf-8")
    (corpus / "noun.exc").write_text(
        "".join(f"{form} {lemma}\n" for form, lemma in sorted(noun_exceptions.items())), encoding="utf-8"
    )
    (corpus / "index.sense").write_text("", encoding="utf-8")
    (corpus / "cntlist.rev").write_text("", encoding="utf-8")


def write_nltk_data(nltk_dir: Path) -> Path:
    write_punkt_tab(nltk_dir)
    write_perceptron_tagger(nltk_dir, PENN_TAGS)
    write_wordnet(nltk_dir, WORDNET_NOUNS, WORDNET_NOUN_EXCEPTIONS)
    return nltk_dir


def write_spacy_pipeline(
    path: Path, vectors: Mapping[str, Sequence[float]], token_attributes: Mapping[str, tuple[str, str]]
) -> Path:
    import numpy
    import spacy

    nlp = spacy.blank("en")
    width = len(next(iter(vectors.values())))
    nlp.vocab.reset_vectors(width=width)
    for word, vector in vectors.items():
        nlp.vocab.set_vector(word, numpy.asarray(vector, dtype="float32"))
    ruler = nlp.add_pipe("attribute_ruler")
    for text, (tag, lemma) in token_attributes.items():
        ruler.add(patterns=[[{"ORTH": text}]], attrs={"TAG": tag, "LEMMA": lemma})
    nlp.to_disk(path)
    return path


@dataclass(frozen=True)
class NlpTestResources:
    nltk_dir: Path
    spacy_pipeline: Path


_LOCK = threading.Lock()
_RESOURCES: NlpTestResources | None = None


def install_test_resources() -> NlpTestResources:
    """Build the resources once per process and put the NLTK directory first on `nltk.data.path`."""
    global _RESOURCES
    import nltk

    with _LOCK:
        if _RESOURCES is None:
            root = Path(tempfile.mkdtemp(prefix="ue_dpo_nlp_test_"))
            atexit.register(shutil.rmtree, root, True)
            _RESOURCES = NlpTestResources(
                nltk_dir=write_nltk_data(root / "nltk_data"),
                spacy_pipeline=write_spacy_pipeline(root / "spacy_pipeline", SPACY_VECTORS, SPACY_TOKEN_ATTRIBUTES),
            )
        if str(_RESOURCES.nltk_dir) not in nltk.data.path:
            nltk.data.path.insert(0, str(_RESOURCES.nltk_dir))
        return _RESOURCES
