"""The NLTK and spaCy resources of the AMBER and Object-HalBench scorers, loaded the standard way.

NLTK data is looked up with `nltk.data.find`, that is in `nltk.data.path` (which NLTK builds from
the `NLTK_DATA` environment variable and the usual system folders). A resource that is not there is
fetched once with `nltk.download` unless `UE_DPO_NLTK_DOWNLOAD=0` (or `download=False`) says not
to; when it still cannot be found, `NLPResourceError` names it and the install command.

spaCy pipelines are loaded with `spacy.load(name)`, where `name` is an installed package or a
directory. A missing pipeline is an error naming the `python -m spacy download` command: there is
never a fallback to another model, since the similarity scores (AMBER) and lemmas/tags
(Object-HalBench) of another model change the benchmark's numbers.

Everything is loaded once per process under a lock, so the scorers can be called from the worker
threads lmms-eval runs `process_results` in.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Sequence
from typing import Any

NLTK_RESOURCE_PATHS: dict[str, str] = {
    "punkt_tab": "tokenizers/punkt_tab/english/",
    "averaged_perceptron_tagger_eng": "taggers/averaged_perceptron_tagger_eng/",
    "wordnet": "corpora/wordnet",
}
NLTK_INSTALL_COMMAND = "python -m nltk.downloader punkt_tab averaged_perceptron_tagger_eng wordnet"
NLTK_DOWNLOAD_ENV_VAR = "UE_DPO_NLTK_DOWNLOAD"

AMBER_SPACY_MODEL = "en_core_web_lg"
OBJECT_HALBENCH_SPACY_MODEL = "en_core_web_trf"


class NLPResourceError(LookupError):
    """An NLTK resource or spaCy pipeline the scorer needs is not installed."""


def _download_enabled(download: bool | None) -> bool:
    if download is not None:
        return download
    return os.environ.get(NLTK_DOWNLOAD_ENV_VAR, "1").strip().lower() not in {"0", "false", "no", "off"}


def _is_installed(resource: str, paths: Sequence[str] | None) -> bool:
    import nltk

    try:
        nltk.data.find(NLTK_RESOURCE_PATHS[resource], paths=list(paths) if paths is not None else None)
    except LookupError:
        return False
    return True


def missing_nltk_resources(
    resources: Sequence[str] = tuple(NLTK_RESOURCE_PATHS), *, paths: Sequence[str] | None = None
) -> list[str]:
    """The names among `resources` that `nltk.data.find` cannot find (in `paths`, default `nltk.data.path`)."""
    unknown = [name for name in resources if name not in NLTK_RESOURCE_PATHS]
    if unknown:
        raise ValueError(f"Unknown NLTK resource(s) {unknown}; known: {sorted(NLTK_RESOURCE_PATHS)}.")
    return [name for name in resources if not _is_installed(name, paths)]


def ensure_nltk_resources(
    resources: Sequence[str] = tuple(NLTK_RESOURCE_PATHS),
    *,
    download: bool | None = None,
    paths: Sequence[str] | None = None,
) -> None:
    """Make sure `resources` are installed, else raise NLPResourceError naming them and the install command.

    Missing ones are first downloaded with `nltk.download` into NLTK's default download directory,
    unless `download` is False (None: the UE_DPO_NLTK_DOWNLOAD environment variable decides,
    default yes) or explicit `paths` are searched.
    """
    import nltk

    missing = missing_nltk_resources(resources, paths=paths)
    download_errors = ""
    if missing and _download_enabled(download) and paths is None:
        errors = io.StringIO()
        for name in missing:
            nltk.download(name, quiet=True, raise_on_error=False, print_error_to=errors)
        download_errors = " ".join(errors.getvalue().split())
        missing = missing_nltk_resources(resources, paths=paths)
    if missing:
        searched = list(paths) if paths is not None else list(nltk.data.path)
        wanted = ", ".join(f"{name!r} ({NLTK_RESOURCE_PATHS[name]})" for name in missing)
        message = (
            f"NLTK resource(s) {wanted} not found in {searched}. Install them with:\n"
            f"    {NLTK_INSTALL_COMMAND}\n"
            "or put them in a directory listed in the NLTK_DATA environment variable."
        )
        if download_errors:
            message += f"\nThe automatic download failed: {download_errors}"
        raise NLPResourceError(message)


class NltkToolkit:
    """The NLTK functions the scorers use, each resource loaded once under a lock.

    `word_tokenize` is `nltk.word_tokenize`; `pos_tag` gives what `nltk.pos_tag` gives (one
    PerceptronTagger is kept instead of `nltk.pos_tag` reloading it on every call); `lemmatize`
    is `WordNetLemmatizer().lemmatize` with its default noun POS.
    """

    def __init__(self, *, download: bool | None = None):
        self._download = download
        self._lock = threading.Lock()
        self._ready: set[str] = set()
        self._tagger: Any = None
        self._lemmatizer: Any = None

    def _ensure(self, resource: str) -> None:
        if resource in self._ready:
            return
        with self._lock:
            if resource in self._ready:
                return
            ensure_nltk_resources((resource,), download=self._download)
            if resource == "punkt_tab":
                import nltk

                nltk.word_tokenize("Warm up the cached Punkt tokenizer.")
            elif resource == "averaged_perceptron_tagger_eng":
                from nltk.tag.perceptron import PerceptronTagger

                self._tagger = PerceptronTagger()
            elif resource == "wordnet":
                from nltk.corpus import wordnet
                from nltk.stem import WordNetLemmatizer

                wordnet.ensure_loaded()
                self._lemmatizer = WordNetLemmatizer()
            self._ready.add(resource)

    def word_tokenize(self, text: str) -> list[str]:
        import nltk

        self._ensure("punkt_tab")
        return nltk.word_tokenize(text)

    def pos_tag(self, tokens: Sequence[str]) -> list[tuple[str, str]]:
        self._ensure("averaged_perceptron_tagger_eng")
        return self._tagger.tag(list(tokens))

    def lemmatize(self, word: str) -> str:
        self._ensure("wordnet")
        return self._lemmatizer.lemmatize(word)


_TOOLKIT_LOCK = threading.Lock()
_TOOLKIT: NltkToolkit | None = None
_SPACY_LOAD_LOCK = threading.Lock()
_SPACY_PIPELINES: dict[str, Any] = {}
_SPACY_CALL_LOCK = threading.Lock()


def nltk_toolkit() -> NltkToolkit:
    """The process-wide NltkToolkit (resources are loaded on first use)."""
    global _TOOLKIT
    with _TOOLKIT_LOCK:
        if _TOOLKIT is None:
            _TOOLKIT = NltkToolkit()
        return _TOOLKIT


def spacy_install_hint(name: str) -> str:
    if os.sep in name or (os.altsep and os.altsep in name) or os.path.exists(name):
        return f"no loadable spaCy pipeline was found at the path {name!r}"
    return f"install it with:\n    python -m spacy download {name}"


def load_spacy_pipeline(name: str) -> Any:
    """`spacy.load(name)`, once per name; NLPResourceError (never another model) when it is not installed."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"A spaCy pipeline name must be a non-empty string, got {name!r}.")
    with _SPACY_LOAD_LOCK:
        if name not in _SPACY_PIPELINES:
            import spacy

            try:
                _SPACY_PIPELINES[name] = spacy.load(name)
            except OSError as error:
                raise NLPResourceError(
                    f"The spaCy pipeline {name!r} could not be loaded; {spacy_install_hint(name)}\n(spaCy said: "
                    f"{error})"
                ) from error
        return _SPACY_PIPELINES[name]


def resolve_spacy_pipeline(nlp: Any) -> Any:
    """A loaded pipeline: `nlp` itself, or `load_spacy_pipeline(nlp)` when it is a name or path."""
    if isinstance(nlp, (str, os.PathLike)):
        return load_spacy_pipeline(os.fspath(nlp))
    if not callable(nlp):
        raise TypeError(f"`nlp` must be a spaCy pipeline or the name of one, got {type(nlp).__name__}.")
    return nlp


def spacy_doc(nlp: Any, text: str) -> Any:
    """`nlp(text)`, one call at a time across threads (spaCy pipelines are not documented as thread-safe)."""
    with _SPACY_CALL_LOCK:
        return nlp(text)


def clear_loaded_resources() -> None:
    """Forget the loaded NLTK toolkit and spaCy pipelines (e.g. after installing data in a running process)."""
    global _TOOLKIT
    with _TOOLKIT_LOCK:
        _TOOLKIT = None
    with _SPACY_LOAD_LOCK:
        _SPACY_PIPELINES.clear()
