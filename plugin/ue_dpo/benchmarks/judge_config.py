"""Settings of the LLM judge (`JudgeConfig`): options from YAML or the command line, with the server and the key
falling back to the environment, validated with messages that name the option."""

from __future__ import annotations

import dataclasses
import os
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DEFAULT_BASE_URL = "https://api.openai.com/v1"
BASE_URL_ENV_VARS = ("OPENAI_BASE_URL", "OPENAI_API_URL")
API_KEY_ENV_VAR = "OPENAI_API_KEY"


class JudgeError(RuntimeError):
    """Base class of the judge client's errors."""


class JudgeConfigError(JudgeError):
    """The judge is misconfigured (bad option, rejected key, unknown model); never counted as a failure."""


# How the user sets each judge option, as error messages name it: JudgeConfig's fields by default; callers that
# configure the judge from flags or environment variables pass their own names (JudgeClient's `setting_names`).
SETTING_NAMES = {
    "model": "`model`",
    "base_url": "`base_url`",
    "api_key": "OPENAI_API_KEY (or the judge `api_key` option)",
    "cache_dir": "`cache_dir`",
    "max_retries": "`max_retries`",
    "timeout": "`timeout`",
    "allow_failures": "`allow_failures`",
}


class JudgeUnavailableError(JudgeError):
    """The judge gave no usable reply after all attempts."""

    def __init__(
        self, *, url: str, model: str, attempts: int, reason: str, setting_names: Mapping[str, str] = SETTING_NAMES
    ):
        self.url = url
        self.model = model
        self.attempts = attempts
        self.reason = reason
        super().__init__(
            f"LLM judge at {url} (model {model!r}) gave no usable reply after {attempts} "
            f"attempt{'s' if attempts != 1 else ''}: {reason}. Check that the server is up and "
            f"serves this model, raise {setting_names['max_retries']} or {setting_names['timeout']}, or use "
            f"{setting_names['allow_failures']} to count them instead (failed items are then left out of the scores "
            "and reported as judge_failures)."
        )


def _parse_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"1", "true", "yes", "on"}:
        return True
    if isinstance(value, str) and value.strip().lower() in {"0", "false", "no", "off"}:
        return False
    raise JudgeConfigError(f"Judge option `{name}` must be true or false, got {value!r}.")


def _parse_number(name: str, value: Any, kind: type, *, minimum: float, allow_none: bool = False) -> Any:
    if value is None or (isinstance(value, str) and value.strip().lower() in {"", "none", "null"}):
        if allow_none:
            return None
        raise JudgeConfigError(f"Judge option `{name}` needs a value.")
    if isinstance(value, bool):
        raise JudgeConfigError(f"Judge option `{name}` must be a number, got {value!r}.")
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise JudgeConfigError(
            f"Judge option `{name}` must be {'an integer' if kind is int else 'a number'}, got {value!r}."
        ) from None
    if kind is int and isinstance(value, float) and value != number:
        raise JudgeConfigError(f"Judge option `{name}` must be an integer, got {value!r}.")
    if number < minimum:
        raise JudgeConfigError(f"Judge option `{name}` must be >= {minimum}, got {value!r}.")
    return number


def normalize_base_url(url: str) -> str:
    """`.../v1`, `.../v1/` and `.../v1/chat/completions` all name the same server."""
    if not isinstance(url, str) or not url.strip():
        raise JudgeConfigError(
            f"Judge `base_url` must be a non-empty URL such as http://127.0.0.1:8000/v1, got {url!r}."
        )
    url = url.strip().rstrip("/")
    url = url.removesuffix("/chat/completions")
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in {"http", "https"} or not parsed.hostname:
        raise JudgeConfigError(
            f"Judge `base_url` must be an http(s) URL such as http://127.0.0.1:8000/v1, got {url!r}."
        )
    return url


def display_url(url: str) -> str:
    """The URL without user-info or query string, safe to print."""
    parsed = urllib.parse.urlsplit(url)
    host = parsed.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parsed.port}" if parsed.port else host
    return urllib.parse.urlunsplit((parsed.scheme, netloc, parsed.path, "", ""))


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
    """Settings of one judge. `model` is required: the official judges are retired, so name yours.

    `max_tokens=None` leaves the reply length to the server (the official MMHal script sets none).
    `max_retries` (retries after the first attempt) and `timeout` (seconds for each phase of a request) are the
    `openai` client's, which also picks the backoff. `cache_dir=None` disables the cache.
    """

    model: str
    base_url: str = DEFAULT_BASE_URL
    api_key: str | None = dataclasses.field(default=None, repr=False)
    temperature: float = 0.0
    max_tokens: int | None = None
    concurrency: int = 4
    max_retries: int = 5
    timeout: float = 120.0
    cache_dir: Path | None = None
    allow_failures: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise JudgeConfigError(
                "Judge `model` is required (e.g. `model: gpt-4o-2024-08-06`, or the name your vLLM server serves)."
            )

        def set_field(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)  # the dataclass is frozen

        set_field("model", self.model.strip())
        set_field("base_url", normalize_base_url(self.base_url))
        if self.api_key is not None and not isinstance(self.api_key, str):
            raise JudgeConfigError("Judge `api_key` must be a string.")
        set_field("api_key", (self.api_key or "").strip() or None)
        set_field("temperature", _parse_number("temperature", self.temperature, float, minimum=0.0))
        set_field("max_tokens", _parse_number("max_tokens", self.max_tokens, int, minimum=1, allow_none=True))
        set_field("concurrency", _parse_number("concurrency", self.concurrency, int, minimum=1))
        set_field("max_retries", _parse_number("max_retries", self.max_retries, int, minimum=0))
        set_field("timeout", _parse_number("timeout", self.timeout, float, minimum=0.001))
        if self.cache_dir is None or (isinstance(self.cache_dir, str) and not self.cache_dir.strip()):
            set_field("cache_dir", None)
        else:
            set_field("cache_dir", Path(self.cache_dir).expanduser())
        set_field("allow_failures", _parse_bool("allow_failures", self.allow_failures))

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_options(
        cls, options: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
    ) -> JudgeConfig:
        """Build from YAML/CLI options; `base_url` and `api_key` fall back to the environment.

        base_url: option, else OPENAI_BASE_URL (the `openai` package's name), else OPENAI_API_URL
        (lmms-eval's name; a full `.../chat/completions` URL is accepted), else api.openai.com.
        api_key: option, else OPENAI_API_KEY, else none (fine for a local server).
        Options whose value is None count as unset.
        """
        environ = os.environ if environ is None else environ
        options = {key: value for key, value in dict(options or {}).items() if value is not None}
        unknown = sorted(set(options) - set(cls.option_names()))
        if unknown:
            raise JudgeConfigError(
                f"Unknown judge option(s) {', '.join(unknown)}; valid options are: {', '.join(cls.option_names())}."
            )
        if "base_url" not in options:
            for variable in BASE_URL_ENV_VARS:
                if environ.get(variable, "").strip():
                    options["base_url"] = environ[variable]
                    break
        if "api_key" not in options and environ.get(API_KEY_ENV_VAR, "").strip():
            options["api_key"] = environ[API_KEY_ENV_VAR]
        if "model" not in options:
            raise JudgeConfigError(
                "Judge `model` is required (e.g. `model: gpt-4o-2024-08-06`, or the name your vLLM server serves)."
            )
        return cls(**options)

    def call_temperature(self, temperature: Any) -> float:
        """The temperature a call asks for (validated), else the judge's."""
        return (
            self.temperature if temperature is None else _parse_number("temperature", temperature, float, minimum=0.0)
        )

    @property
    def endpoint(self) -> str:
        return self.base_url + "/chat/completions"

    def public_dict(self) -> dict[str, Any]:
        """The settings without the API key, for result files."""
        public = dataclasses.asdict(self)
        public.pop("api_key")
        public["base_url"] = display_url(self.base_url)
        public["cache_dir"] = None if self.cache_dir is None else str(self.cache_dir)
        public["api_key_set"] = self.api_key is not None
        return public
