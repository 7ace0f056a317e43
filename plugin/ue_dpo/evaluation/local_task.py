"""The lmms-eval task class our benchmark tasks share: docs built from local files, settings bound to process_results,
and the chat messages lmms-eval's chat models ask for."""

from __future__ import annotations

import contextvars
import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

from lmms_eval.api.filter import Filter, FilterEnsemble
from lmms_eval.api.task import ConfigurableMessagesTask, ConfigurableTask

from ue_dpo.evaluation.chat import ChatPrompt

# "simple" or "chat": what lmms-eval is loading tasks for (set by ue_dpo.evaluation.discovery around
# TaskManager.load_task_or_group), since lmms-eval builds a YAML with `class:` the same way for every model
LOADING_TASK_TYPE: contextvars.ContextVar[str] = contextvars.ContextVar("ue_dpo_loading_task_type", default="simple")


class LocalFilesTask(ConfigurableTask):
    """A task whose docs a subclass builds from files (`load_docs`) instead of `datasets.load_dataset`.

    The YAML names the subclass with `class:`; `bind_settings` gives `process_results` the
    resources the task's settings select (judge client, spaCy model, reference data). Loaded for a chat
    model, the task is its chat variant: a ConfigurableMessagesTask whose requests carry `doc_to_messages`.
    """

    def __new__(cls, *args: Any, **kwargs: Any):
        chat = LOADING_TASK_TYPE.get() == "chat" and not issubclass(cls, ConfigurableMessagesTask)
        return super().__new__(_chat_variant(cls) if chat else cls)

    def __init__(self, config: dict[str, Any] | None = None, **kwargs: Any) -> None:
        config = dict(config or {})
        config.pop("class", None)
        super().__init__(config=config, **kwargs)

    def load_docs(self, dataset_kwargs: Mapping[str, Any] | None) -> Any:
        raise NotImplementedError

    def bind_settings(self, metadata: dict[str, Any]) -> dict[str, Any]:
        """Keyword arguments for the YAML's process_results function; records the settings in `metadata`."""
        raise NotImplementedError

    def download(self, dataset_kwargs: dict[str, Any] | None = None) -> None:
        from datasets import DatasetDict

        docs = self.load_docs(dataset_kwargs)
        self.dataset = DatasetDict({self.config.test_split: docs})
        self.dataset_no_image = DatasetDict({self.config.test_split: docs.remove_columns(["image"])})
        if not isinstance(self.config.metadata, dict):
            self.config.metadata = {}
        bound = self.bind_settings(self.config.metadata)
        process_results = self.config.process_results

        @functools.wraps(process_results)
        def process_results_with_settings(doc, results):
            return process_results(doc, results, **bound)

        self.config.process_results = process_results_with_settings


class _TrainingAnswer(Filter):
    """The answer in each response, as `ue_dpo_hf` takes it (`ChatPrompt.answer`), before the task's filters."""

    def __init__(self, chat_prompt: ChatPrompt) -> None:
        self.chat_prompt = chat_prompt

    def apply(self, resps, docs):
        return [[self.chat_prompt.answer(response) for response in responses] for responses in resps]


class _ChatMessages:
    """Mixed in before ConfigurableMessagesTask: the training template's messages (see ue_dpo.evaluation.chat), and
    the answer of each response taken as `ue_dpo_hf` takes it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._filters = [
            FilterEnsemble(name=ensemble.name, filters=[_TrainingAnswer(self.chat_prompt), *ensemble.filters])
            for ensemble in self._filters
        ]

    def download(self, dataset_kwargs: dict[str, Any] | None = None) -> None:
        super().download(dataset_kwargs)
        self.chat_prompt = ChatPrompt.from_settings(self.config.metadata, self.config.task)
        self.config.metadata["chat_prompt"] = dataclasses.asdict(self.chat_prompt)  # recorded in the results' config

    def doc_to_messages(self, doc: dict, **round_kwargs: Any) -> list[dict[str, Any]]:
        if round_kwargs.get("round_idx") is not None:
            raise NotImplementedError(
                f"{self.config.task} is single-round; lmms-eval asked for round {round_kwargs['round_idx']}"
            )
        return self.chat_prompt.messages(self.doc_to_visual(doc) or [], self.doc_to_text(doc))


@functools.cache
def _chat_variant(task_class: type) -> type:
    return type(
        f"{task_class.__name__}Chat",
        (_ChatMessages, task_class, ConfigurableMessagesTask),
        {"__module__": task_class.__module__, "__doc__": task_class.__doc__},
    )
