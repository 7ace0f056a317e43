"""The lmms-eval task class our benchmark tasks share: docs built from local files, settings bound to process_results."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from lmms_eval.api.task import ConfigurableTask


class LocalFilesTask(ConfigurableTask):
    """A task whose docs a subclass builds from files (`load_docs`) instead of `datasets.load_dataset`.

    The YAML names the subclass with `class:`; `bind_settings` gives `process_results` the
    resources the task's settings select (judge client, spaCy model, reference data).
    """

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
