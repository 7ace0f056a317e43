"""A thread-safe LLM-judge client for OpenAI-compatible chat-completions servers.

Works against api.openai.com, a local vLLM / SGLang server or any other server that speaks
`POST {base_url}/chat/completions`. Replies are cached on disk (sqlite), so re-scoring a run
never pays twice; failures are retried with exponential backoff and then either raised
(`JudgeUnavailableError`) or, with `allow_failures`, recorded in the result and counted.

The API key is only ever placed in the `Authorization` header: it is kept out of `repr`,
logs, cache rows, exception messages and results (server error texts are redacted too).
"""

from __future__ import annotations

import dataclasses
import email.utils
import hashlib
import http.client
import json
import logging
import os
import random
import re
import sqlite3
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
BASE_URL_ENV_VARS = ("OPENAI_BASE_URL", "OPENAI_API_URL")
API_KEY_ENV_VAR = "OPENAI_API_KEY"
CACHE_FILENAME = "judge_cache.sqlite3"

_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_RETRYABLE_STATUS = frozenset({408, 409, 425, 429})
# Fixes of the HTTP answers that mean a misconfigured judge, formatted with SETTING_NAMES.
_CONFIG_ERROR_STATUS = {
    401: "the server rejected the API key; set {api_key}",
    403: "the API key is not allowed to use this model or endpoint",
    404: "the endpoint or model was not found; check {base_url} (it should end in /v1) and {model}",
}
# OpenAI echoes a masked key ("sk-abc***...1234") in 401 bodies; drop anything shaped like a key.
_KEY_LIKE = re.compile(r"\bsk-[A-Za-z0-9_\-*.]{3,}")
_SERVER_TEXT_LIMIT = 300


class JudgeError(RuntimeError):
    """Base class of the judge client's errors."""


class JudgeConfigError(JudgeError):
    """The judge is misconfigured (bad option, rejected key, unknown model); never counted as a failure."""


# How the user sets each judge option, as error messages name it: JudgeConfig's fields by default; callers that
# configure the judge from flags or environment variables pass their own names (JudgeClient's `setting_names`).
SETTING_NAMES = {
    "model": "`model`", "base_url": "`base_url`", "api_key": "OPENAI_API_KEY (or the judge `api_key` option)",
    "cache_dir": "`cache_dir`", "max_retries": "`max_retries`", "timeout": "`timeout`", "allow_failures": "`allow_failures`",
}


class JudgeUnavailableError(JudgeError):
    """The judge gave no usable reply after all attempts."""

    def __init__(self, *, url: str, model: str, attempts: int, reason: str, setting_names: Mapping[str, str] = SETTING_NAMES):
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
        raise JudgeConfigError(f"Judge option `{name}` must be {'an integer' if kind is int else 'a number'}, got {value!r}.") from None
    if kind is int and isinstance(value, float) and value != number:
        raise JudgeConfigError(f"Judge option `{name}` must be an integer, got {value!r}.")
    if number < minimum:
        raise JudgeConfigError(f"Judge option `{name}` must be >= {minimum}, got {value!r}.")
    return number


def normalize_base_url(url: str) -> str:
    """`.../v1`, `.../v1/` and `.../v1/chat/completions` all name the same server."""
    if not isinstance(url, str) or not url.strip():
        raise JudgeConfigError(f"Judge `base_url` must be a non-empty URL such as http://127.0.0.1:8000/v1, got {url!r}.")
    url = url.strip().rstrip("/")
    url = url.removesuffix("/chat/completions")
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in {"http", "https"} or not parsed.hostname:
        raise JudgeConfigError(f"Judge `base_url` must be an http(s) URL such as http://127.0.0.1:8000/v1, got {url!r}.")
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
    `max_retries` counts retries after the first attempt. `cache_dir=None` disables the cache.
    """

    model: str
    base_url: str = DEFAULT_BASE_URL
    api_key: str | None = dataclasses.field(default=None, repr=False)
    temperature: float = 0.0
    max_tokens: int | None = None
    concurrency: int = 4
    max_retries: int = 5
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 60.0
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
        set_field("backoff_seconds", _parse_number("backoff_seconds", self.backoff_seconds, float, minimum=0.0))
        set_field("max_backoff_seconds", _parse_number("max_backoff_seconds", self.max_backoff_seconds, float, minimum=0.0))
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
    def from_options(cls, options: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> JudgeConfig:
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


@dataclasses.dataclass(frozen=True)
class JudgeResult:
    """One judge call. `content` is None exactly when the call failed (`error` says why)."""

    content: str | None
    judge_model: str
    served_model: str | None = None
    cached: bool = False
    attempts: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)) or not messages:
        raise TypeError(f"Judge messages must be a non-empty list of {{'role': ..., 'content': ...}} dicts, got {type(messages).__name__}.")
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str) or "content" not in message:
            raise TypeError(f"Judge message {index} must be a dict with a string 'role' and a 'content', got {message!r:.200}.")
    return [dict(message) for message in messages]


def judge_cache_key(model: str, messages: list[dict[str, Any]], temperature: float, max_tokens: int | None) -> str:
    """sha256 of the canonical JSON of everything that determines the judge's reply."""
    canonical = json.dumps(
        {"model": model, "messages": messages, "temperature": float(temperature), "max_tokens": max_tokens},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class JudgeCache:
    """Replies keyed by `judge_cache_key`, in `<cache_dir>/judge_cache.sqlite3`; first reply wins.

    One connection guarded by a lock serves all threads; sqlite's file locking (60 s busy
    timeout) covers several processes sharing the directory.
    """

    def __init__(self, directory: Path, *, setting_name: str = SETTING_NAMES["cache_dir"]):
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / CACHE_FILENAME
        self._lock = threading.Lock()
        try:
            self._connection = sqlite3.connect(self.path, timeout=60.0, check_same_thread=False, isolation_level=None)
            self._connection.execute(
                "CREATE TABLE IF NOT EXISTS judge_replies ("
                " key TEXT PRIMARY KEY, model TEXT NOT NULL, request TEXT NOT NULL,"
                " reply TEXT NOT NULL, served_model TEXT, created_at REAL NOT NULL)"
            )
        except sqlite3.Error as exc:
            raise JudgeConfigError(f"Cannot open the judge cache {self.path}: {exc}. Fix or delete the file, or set another {setting_name}.") from None

    def get(self, key: str) -> tuple[str, str | None] | None:
        with self._lock:
            row = self._connection.execute("SELECT reply, served_model FROM judge_replies WHERE key = ?", (key,)).fetchone()
        return None if row is None else (row[0], row[1])

    def put(self, key: str, *, model: str, request: dict[str, Any], reply: str, served_model: str | None) -> None:
        with self._lock:
            self._connection.execute(
                "INSERT OR IGNORE INTO judge_replies (key, model, request, reply, served_model, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (key, model, json.dumps(request, ensure_ascii=False, sort_keys=True), reply, served_model, time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            return self._connection.execute("SELECT COUNT(*) FROM judge_replies").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._connection.close()


class _AttemptFailed(Exception):
    def __init__(self, reason: str, *, retryable: bool, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after


def _retry_after_seconds(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class JudgeClient:
    """Chat completions with retries, an on-disk cache and failure accounting; safe to share across threads.

    At most `config.concurrency` requests are in flight per client, whichever threads issue them.
    """

    def __init__(self, config: JudgeConfig, *, setting_names: Mapping[str, str] | None = None):
        if not isinstance(config, JudgeConfig):
            raise TypeError(f"JudgeClient needs a JudgeConfig, got {type(config).__name__}; use JudgeConfig.from_options(...).")
        self.config = config
        self.setting_names = {**SETTING_NAMES, **(setting_names or {})}
        self.cache = (JudgeCache(config.cache_dir, setting_name=self.setting_names["cache_dir"])
                      if config.cache_dir is not None else None)
        self._slots = threading.BoundedSemaphore(config.concurrency)
        self._stats_lock = threading.Lock()
        self._failures = 0
        self._requests = 0
        self._cache_hits = 0
        hostname = urllib.parse.urlsplit(config.base_url).hostname or ""
        # Environment proxies must not capture a judge running on this machine.
        self._bypass_proxy = hostname in _LOOPBACK_HOSTS

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None, *,
                     setting_names: Mapping[str, str] | None = None) -> JudgeClient:
        return cls(JudgeConfig.from_options(options, environ), setting_names=setting_names)

    def __repr__(self) -> str:
        return f"JudgeClient(model={self.config.model!r}, url={display_url(self.config.endpoint)!r})"

    def __enter__(self) -> JudgeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()

    @property
    def judge_failures(self) -> int:
        """Calls that failed after all attempts and were recorded (allow_failures) or raised."""
        with self._stats_lock:
            return self._failures

    @property
    def stats(self) -> dict[str, int]:
        with self._stats_lock:
            return {"http_requests": self._requests, "cache_hits": self._cache_hits, "judge_failures": self._failures}

    def _redact(self, text: str) -> str:
        if self.config.api_key:
            text = text.replace(self.config.api_key, "***")
        return _KEY_LIKE.sub("sk-***", text)

    def _opener(self) -> urllib.request.OpenerDirector:
        if self._bypass_proxy:
            return urllib.request.build_opener(urllib.request.ProxyHandler({}))
        return urllib.request.build_opener()

    def _post_once(self, payload: dict[str, Any]) -> tuple[str, str | None]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        request = urllib.request.Request(
            self.config.endpoint, data=json.dumps(payload).encode("utf-8"), headers=headers, method="POST"
        )
        with self._stats_lock:
            self._requests += 1
        try:
            with self._slots, self._opener().open(request, timeout=self.config.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            try:
                server_text = exc.read().decode("utf-8", "replace")
            except (OSError, http.client.HTTPException):
                server_text = ""
            server_text = self._redact(" ".join(server_text.split()))[:_SERVER_TEXT_LIMIT]
            detail = f"HTTP {exc.code}" + (f": {server_text}" if server_text else "")
            if exc.code in _CONFIG_ERROR_STATUS:
                raise JudgeConfigError(
                    f"LLM judge at {display_url(self.config.endpoint)} (model {self.config.model!r}) answered {detail}. "
                    f"Fix: {_CONFIG_ERROR_STATUS[exc.code].format(**self.setting_names)}."
                ) from None
            retryable = exc.code in _RETRYABLE_STATUS or exc.code >= 500
            raise _AttemptFailed(detail, retryable=retryable, retry_after=_retry_after_seconds(exc.headers)) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise _AttemptFailed(
                self._redact(f"connection failed ({type(reason).__name__}: {reason})"), retryable=True
            ) from None
        try:
            data = json.loads(body)
            content = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            snippet = self._redact(" ".join(body.decode("utf-8", "replace").split()))[:_SERVER_TEXT_LIMIT]
            raise _AttemptFailed(f"malformed chat-completions response: {snippet!r}", retryable=True) from None
        if not isinstance(content, str):
            raise _AttemptFailed(f"reply has no text content (content={content!r})", retryable=True)
        served_model = data.get("model") if isinstance(data.get("model"), str) else None
        return content, served_model

    def _backoff(self, retry_number: int, retry_after: float | None) -> float:
        delay = self.config.backoff_seconds * (2 ** (retry_number - 1))
        if retry_after is not None:
            delay = max(delay, retry_after)
        delay = min(delay, self.config.max_backoff_seconds)
        return delay * (1.0 + 0.25 * random.random())

    def complete_result(self, messages: list[dict[str, Any]], *, temperature: float | None = None) -> JudgeResult:
        """One judged reply as a JudgeResult, from the cache when possible.

        After all attempts fail this raises JudgeUnavailableError, or with `allow_failures`
        returns a result with `content=None` and `error` set. JudgeConfigError (rejected key,
        unknown model or endpoint) is always raised: counting it would silently score nothing.
        """
        return self._complete(messages, temperature=temperature, allow_failures=self.config.allow_failures)

    def _complete(self, messages: Any, *, temperature: float | None, allow_failures: bool) -> JudgeResult:
        messages = _check_messages(messages)
        temperature = self.config.temperature if temperature is None else _parse_number("temperature", temperature, float, minimum=0.0)
        key = judge_cache_key(self.config.model, messages, temperature, self.config.max_tokens)
        model = self.config.model
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                with self._stats_lock:
                    self._cache_hits += 1
                return JudgeResult(content=hit[0], judge_model=model, served_model=hit[1], cached=True, attempts=0)

        payload: dict[str, Any] = {"model": model, "messages": messages, "temperature": temperature}
        if self.config.max_tokens is not None:
            payload["max_tokens"] = self.config.max_tokens
        total_attempts = self.config.max_retries + 1
        attempts = 0
        while True:
            attempts += 1
            try:
                content, served_model = self._post_once(payload)
                break
            except _AttemptFailed as failure:
                if failure.retryable and attempts < total_attempts:
                    delay = self._backoff(attempts, failure.retry_after)
                    logger.warning(
                        "LLM judge %s (model %r) attempt %d/%d failed: %s; retrying in %.2f s",
                        display_url(self.config.endpoint), model, attempts, total_attempts, failure.reason, delay,
                    )
                    time.sleep(delay)
                    continue
                with self._stats_lock:
                    self._failures += 1
                error = JudgeUnavailableError(
                    url=display_url(self.config.endpoint), model=model, attempts=attempts, reason=failure.reason,
                    setting_names=self.setting_names,
                )
                if not allow_failures:
                    raise error from None
                logger.warning("%s (counted as a judge failure because allow_failures is set)", error)
                return JudgeResult(content=None, judge_model=model, attempts=attempts, error=str(error))

        if self.cache is not None:
            self.cache.put(key, model=model, request=payload, reply=content, served_model=served_model)
        return JudgeResult(content=content, judge_model=model, served_model=served_model, cached=False, attempts=attempts)

    def complete(self, messages: list[dict[str, Any]], *, temperature: float | None = None) -> str:
        """The reply text. Always raises on failure (even with allow_failures, as there is no text
        to return); use `complete_result` or `complete_many` to have failures counted instead."""
        result = self._complete(messages, temperature=temperature, allow_failures=False)
        assert result.content is not None
        return result.content

    def complete_many(self, list_of_messages: Sequence[list[dict[str, Any]]], *, temperature: float | None = None) -> list[JudgeResult]:
        """Results in input order, `config.concurrency` calls at a time; identical requests are sent once."""
        conversations = [_check_messages(messages) for messages in list_of_messages]
        if temperature is not None:
            temperature = _parse_number("temperature", temperature, float, minimum=0.0)
        key_temperature = self.config.temperature if temperature is None else temperature
        first_index_by_key: dict[str, int] = {}
        source_index = []
        for index, messages in enumerate(conversations):
            key = judge_cache_key(self.config.model, messages, key_temperature, self.config.max_tokens)
            source_index.append(first_index_by_key.setdefault(key, index))
        unique_indices = list(first_index_by_key.values())
        if not unique_indices:
            return []
        unique_results: dict[int, JudgeResult] = {}
        with ThreadPoolExecutor(max_workers=min(self.config.concurrency, len(unique_indices)), thread_name_prefix="judge") as pool:
            futures = {index: pool.submit(self.complete_result, conversations[index], temperature=temperature) for index in unique_indices}
            try:
                for index, future in futures.items():
                    unique_results[index] = future.result()
            except BaseException:
                # Stop queued calls; the ones in flight finish before the error propagates.
                pool.shutdown(wait=False, cancel_futures=True)
                raise
        return [unique_results[index] for index in source_index]
