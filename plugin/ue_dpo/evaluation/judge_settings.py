"""The judge of a judged task, configured from the task YAML's `metadata` or the environment.

metadata key        environment variable          default
judge_model         UE_DPO_JUDGE_MODEL            (required)
judge_base_url      OPENAI_BASE_URL               https://api.openai.com/v1
judge_cache_dir     UE_DPO_JUDGE_CACHE_DIR        <cache dir>/judge/<endpoint> (one folder per server)
judge_max_retries   UE_DPO_JUDGE_MAX_RETRIES      5 (retries after the first attempt)
judge_timeout       UE_DPO_JUDGE_TIMEOUT          120 (seconds per request)
allow_judge_failures UE_DPO_ALLOW_JUDGE_FAILURES  false
judge_unparsed_as_zero UE_DPO_JUDGE_UNPARSED_AS_ZERO false (MMHal-Bench: score a reply with zero or several
                                                  ratings 0, as the official script does, instead of failing)
The API key is read from OPENAI_API_KEY only, so it never sits in a YAML file or a result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ue_dpo.benchmarks.judge_config import JudgeConfig, JudgeConfigError, display_url, normalize_base_url
from ue_dpo.evaluation.data import cache_dir, setting

if TYPE_CHECKING:
    from ue_dpo.benchmarks.judge import JudgeClient

JUDGE_MODEL_ENV = "UE_DPO_JUDGE_MODEL"
JUDGE_CACHE_DIR_ENV = "UE_DPO_JUDGE_CACHE_DIR"
JUDGE_MAX_RETRIES_ENV = "UE_DPO_JUDGE_MAX_RETRIES"
JUDGE_TIMEOUT_ENV = "UE_DPO_JUDGE_TIMEOUT"
ALLOW_JUDGE_FAILURES_ENV = "UE_DPO_ALLOW_JUDGE_FAILURES"
JUDGE_UNPARSED_AS_ZERO_ENV = "UE_DPO_JUDGE_UNPARSED_AS_ZERO"
# The judge settings as error messages name them to a user of the tasks (`ue-dpo run` passes its `judge:` block on
# in these variables, and `evaluation.env` sets any of them).
TASK_SETTING_NAMES = {
    "model": f"{JUDGE_MODEL_ENV} (`judge.model` under `ue-dpo run`)",
    "base_url": "OPENAI_BASE_URL (`judge.base_url` under `ue-dpo run`)",
    "api_key": "OPENAI_API_KEY",
    "cache_dir": f"{JUDGE_CACHE_DIR_ENV} (`judge.cache_dir` under `ue-dpo run`)",
    "max_retries": JUDGE_MAX_RETRIES_ENV,
    "timeout": f"{JUDGE_TIMEOUT_ENV} (seconds)",
    "allow_failures": f"{ALLOW_JUDGE_FAILURES_ENV}=1 (`judge.allow_failures: true` under `ue-dpo run`)",
}


def default_judge_cache_dir(base_url: str) -> str:
    """<cache dir>/judge/<host>_<port>-<hash of the endpoint>: servers never share the default cache."""
    endpoint = display_url(normalize_base_url(base_url))
    parsed = urllib.parse.urlsplit(endpoint)
    readable = re.sub(r"[^A-Za-z0-9.-]+", "_", f"{parsed.hostname}_{parsed.port or parsed.scheme}").strip("_")
    return str(cache_dir() / "judge" / f"{readable}-{hashlib.sha256(endpoint.encode()).hexdigest()[:12]}")


def unparsed_as_zero(metadata: Mapping[str, Any], *, setting_name: str = JUDGE_UNPARSED_AS_ZERO_ENV) -> bool:
    """Whether a judge reply with zero or several ratings is scored 0 (the official MMHal-Bench script) rather than
    failing the scoring."""
    value = setting(metadata, "judge_unparsed_as_zero", JUDGE_UNPARSED_AS_ZERO_ENV, False)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
        raise JudgeConfigError(f"{setting_name} must be 1 or 0 (true or false), got {value!r}.")
    return text in {"1", "true", "yes", "on"}


def task_judge(
    task_name: str, metadata: Mapping[str, Any], *, setting_names: Mapping[str, str] = TASK_SETTING_NAMES
) -> JudgeClient:
    model = setting(metadata, "judge_model", JUDGE_MODEL_ENV)
    if not model:
        raise JudgeConfigError(
            f"{task_name} is scored by an LLM judge: name its model with {JUDGE_MODEL_ENV}=MODEL (for a local vLLM "
            f"server also OPENAI_BASE_URL=http://HOST:PORT/v1), or `metadata: {{judge_model: MODEL}}` in a task YAML."
        )
    options = {
        "model": model,
        "base_url": metadata.get("judge_base_url"),
        "cache_dir": setting(metadata, "judge_cache_dir", JUDGE_CACHE_DIR_ENV),
        "max_retries": setting(metadata, "judge_max_retries", JUDGE_MAX_RETRIES_ENV),
        "timeout": setting(metadata, "judge_timeout", JUDGE_TIMEOUT_ENV),
        "allow_failures": setting(metadata, "allow_judge_failures", ALLOW_JUDGE_FAILURES_ENV, False),
    }
    from ue_dpo.benchmarks.judge import JudgeClient  # imports `openai` (about a second), which only judged tasks need

    config = JudgeConfig.from_options(options)
    if config.cache_dir is None:
        config = dataclasses.replace(config, cache_dir=default_judge_cache_dir(config.base_url))
    return JudgeClient(config, setting_names=setting_names)
