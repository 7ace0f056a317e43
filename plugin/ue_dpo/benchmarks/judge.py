"""A thread-safe LLM-judge client for OpenAI-compatible chat-completions servers (api.openai.com, vLLM, SGLang, ...).

The official `openai` client does the HTTP, the retries and the backoff (Retry-After included). Ours adds an on-disk
cache (sqlite) by endpoint, model and full prompt, so re-scoring never pays twice; a bound on the calls in flight across
threads; failure accounting: a call without a usable reply is raised (`JudgeUnavailableError`) or, with
`allow_failures`, recorded and counted; and reply checks: a reply the caller's `accept` rejects (a rating it cannot
parse) is asked again up to `max_retries` times and returned flagged (`accepted=False`). Only accepted replies are
cached. A body that is not JSON (a web page, a proxy's login page) is a misconfigured `base_url` (JudgeConfigError).
The API key goes only into the `Authorization` header: never into `repr`, logs, cache rows, exception messages or
results (server error texts are redacted too). The settings are judge_config.py's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai

from ue_dpo.benchmarks.judge_config import (
    SETTING_NAMES,
    JudgeConfig,
    JudgeConfigError,
    JudgeUnavailableError,
    display_url,
)

logger = logging.getLogger(__name__)

CACHE_FILENAME = "judge_cache.sqlite3"

_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
# Fixes of the HTTP answers that mean a misconfigured judge, formatted with SETTING_NAMES.
_CONFIG_ERROR_STATUS = {
    401: "the server rejected the API key; set {api_key}",
    403: "the API key is not allowed to use this model or endpoint",
    404: "the endpoint or model was not found; check {base_url} (it should end in /v1) and {model}",
}
# OpenAI echoes a masked key ("sk-abc***...1234") in 401 bodies; drop anything shaped like a key.
_KEY_LIKE = re.compile(r"\bsk-[A-Za-z0-9_\-*.]{3,}")
_SERVER_TEXT_LIMIT = 300


@dataclasses.dataclass(frozen=True)
class JudgeResult:
    """One judge call. `content` is None exactly when the call failed (`error` says why). `accepted` is False when
    the caller's `accept` rejected every reply, the last of which `content` then holds."""

    content: str | None
    judge_model: str
    served_model: str | None = None
    cached: bool = False
    attempts: int = 0
    error: str | None = None
    accepted: bool = True

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)) or not messages:
        raise TypeError(
            f"Judge messages must be a non-empty list of {{'role': ..., 'content': ...}} dicts, got "
            f"{type(messages).__name__}."
        )
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str) or "content" not in message:
            raise TypeError(
                f"Judge message {index} must be a dict with a string 'role' and a 'content', got {message!r:.200}."
            )
    return [dict(message) for message in messages]


def judge_cache_key(
    base_url: str, model: str, messages: list[dict[str, Any]], temperature: float, max_tokens: int | None
) -> str:
    """sha256 of the canonical JSON of everything that determines the judge's reply: the server (two servers may
    serve different weights under one model name), the model and the request."""
    request = {
        "base_url": display_url(base_url),
        "model": model,
        "messages": messages,
        "temperature": float(temperature),
        "max_tokens": max_tokens,
    }
    return hashlib.sha256(
        json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    ).hexdigest()


class JudgeCache:
    """Replies keyed by `judge_cache_key`, in `<cache_dir>/judge_cache.sqlite3`; first reply wins. One connection
    guarded by a lock serves all threads; sqlite's file locking (60 s busy timeout) covers processes sharing it."""

    def __init__(self, directory: Path, *, setting_name: str = SETTING_NAMES["cache_dir"]):
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / CACHE_FILENAME
        self._lock = threading.Lock()
        try:
            self._connection = sqlite3.connect(self.path, timeout=60.0, check_same_thread=False, isolation_level=None)
            self._execute(
                "CREATE TABLE IF NOT EXISTS judge_replies (key TEXT PRIMARY KEY, model TEXT NOT NULL, request TEXT NOT "
                "NULL,"
                " reply TEXT NOT NULL, served_model TEXT, created_at REAL NOT NULL)"
            )
        except sqlite3.Error as exc:
            raise JudgeConfigError(
                f"Cannot open the judge cache {self.path}: {exc}. Fix or delete the file, or set another "
                f"{setting_name}."
            ) from None

    def _execute(self, statement: str, parameters: tuple = ()) -> tuple | None:
        with self._lock:
            return self._connection.execute(statement, parameters).fetchone()

    def get(self, key: str) -> tuple[str, str | None] | None:
        """(reply, served model), or None."""
        return self._execute("SELECT reply, served_model FROM judge_replies WHERE key = ?", (key,))

    def delete(self, key: str) -> None:
        self._execute("DELETE FROM judge_replies WHERE key = ?", (key,))

    def put(self, key: str, *, model: str, request: dict[str, Any], reply: str, served_model: str | None) -> None:
        self._execute(
            "INSERT OR IGNORE INTO judge_replies (key, model, request, reply, served_model, created_at) VALUES (?, ?, "
            "?, ?, ?, ?)",
            (key, model, json.dumps(request, ensure_ascii=False, sort_keys=True), reply, served_model, time.time()),
        )

    def __len__(self) -> int:
        return self._execute("SELECT COUNT(*) FROM judge_replies")[0]

    def close(self) -> None:
        with self._lock:
            self._connection.close()


class JudgeClient:
    """Chat completions through the `openai` client, with the cache and failure accounting; safe to share across
    threads. At most `config.concurrency` calls (each with its retries) are in flight, whichever threads issue them.
    """

    def __init__(self, config: JudgeConfig, *, setting_names: Mapping[str, str] | None = None):
        if not isinstance(config, JudgeConfig):
            raise TypeError(
                f"JudgeClient needs a JudgeConfig, got {type(config).__name__}; use JudgeConfig.from_options(...)."
            )
        self.config = config
        self.setting_names = {**SETTING_NAMES, **(setting_names or {})}
        self.cache = (
            JudgeCache(config.cache_dir, setting_name=self.setting_names["cache_dir"])
            if config.cache_dir is not None
            else None
        )
        self._slots = threading.BoundedSemaphore(config.concurrency)
        self._stats_lock = threading.Lock()
        self._stats = {"http_requests": 0, "cache_hits": 0, "judge_failures": 0, "rejected_replies": 0}
        self._call = threading.local()  # `attempts`: the HTTP requests of the call running on this thread
        # Environment proxies must not capture a judge running on this machine.
        loopback = urllib.parse.urlsplit(config.base_url).hostname in _LOOPBACK_HOSTS
        http_client = openai.DefaultHttpxClient(trust_env=not loopback, event_hooks={"request": [self._count_attempt]})
        # The client wants a key even for a keyless local server; that placeholder never leaves, as the header is
        # omitted.
        self._openai = openai.OpenAI(
            base_url=config.base_url,
            api_key=config.api_key or "none",
            max_retries=config.max_retries,
            timeout=config.timeout,
            http_client=http_client,
        )
        self._auth_header = {} if config.api_key else {"Authorization": openai.omit}

    def __repr__(self) -> str:
        return f"JudgeClient(model={self.config.model!r}, url={display_url(self.config.endpoint)!r})"

    def close(self) -> None:
        self._openai.close()
        if self.cache is not None:
            self.cache.close()

    @property
    def stats(self) -> dict[str, int]:
        with self._stats_lock:
            return dict(self._stats)

    @property
    def judge_failures(self) -> int:
        """Calls that failed after all attempts and were recorded (allow_failures) or raised."""
        return self.stats["judge_failures"]

    def _count(self, name: str) -> None:
        with self._stats_lock:
            self._stats[name] += 1

    def _redact(self, text: str) -> str:
        if self.config.api_key:
            text = text.replace(self.config.api_key, "***")
        return _KEY_LIKE.sub("sk-***", text)

    def _count_attempt(self, request: object) -> None:
        """Request hook of the HTTP client; the `openai` client sends every attempt from the calling thread."""
        self._call.attempts += 1
        self._count("http_requests")
        if self._call.attempts > 1:
            logger.warning(
                "LLM judge %s (model %r) attempt %d/%d failed; retrying",
                display_url(self.config.endpoint),
                self.config.model,
                self._call.attempts - 1,
                self.config.max_retries + 1,
            )

    def _chat_completion(self, payload: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
        """(reply, served model, None) or (None, None, why it failed) after the `openai` client's attempts, whose
        number `self._call.attempts` then holds."""
        with self._slots:
            self._call.attempts = 0
            try:
                raw = self._openai.chat.completions.with_raw_response.create(**payload, extra_headers=self._auth_header)
                self._check_json(raw.http_response)
                completion = raw.parse()
            except openai.APIStatusError as error:
                server_text = self._redact(" ".join(error.response.text.split()))[:_SERVER_TEXT_LIMIT]
                detail = f"HTTP {error.status_code}" + (f": {server_text}" if server_text else "")
                if error.status_code in _CONFIG_ERROR_STATUS:
                    raise JudgeConfigError(
                        f"LLM judge at {display_url(self.config.endpoint)} (model {self.config.model!r}) "
                        f"answered {detail}. Fix: "
                        f"{_CONFIG_ERROR_STATUS[error.status_code].format(**self.setting_names)}."
                    ) from None
                return None, None, detail
            except openai.APIConnectionError as error:  # timeouts included
                cause = error.__cause__ or error
                return None, None, self._redact(f"connection failed ({type(cause).__name__}: {cause})")
        choices = getattr(completion, "choices", None)
        if not choices or not isinstance(choices[0].message.content, str):
            return (
                None,
                None,
                self._redact(f"malformed chat-completions response: {str(completion)[:_SERVER_TEXT_LIMIT]!r}"),
            )
        return choices[0].message.content, completion.model, None

    def _check_json(self, response: Any) -> None:
        """A reply whose body is not JSON comes from something other than an OpenAI-compatible API (a web page, a
        proxy's login page): a misconfigured `base_url`, which retrying cannot fix."""
        try:
            json.loads(response.text)
        except ValueError:
            content_type = response.headers.get("content-type") or "no Content-Type"
            body = self._redact(" ".join(response.text.split()))[:_SERVER_TEXT_LIMIT]
            raise JudgeConfigError(
                f"LLM judge at {display_url(self.config.endpoint)} (model {self.config.model!r}) answered HTTP "
                f"{response.status_code} with a body that is not JSON ({content_type}: {body!r}), so it is not an "
                f"OpenAI-compatible chat-completions API. Fix: point {self.setting_names['base_url']} at the server's "
                "OpenAI-compatible API, the URL that ends in /v1 (e.g. http://127.0.0.1:8000/v1 for a local vLLM "
                "server), not a web page or a proxy in front of it."
            ) from None

    def complete_result(
        self,
        messages: list[dict[str, Any]],
        *,
        temperature: float | None = None,
        accept: Callable[[str], bool] | None = None,
    ) -> JudgeResult:
        """One judged reply, from the cache when possible. After all attempts fail this raises JudgeUnavailableError, or
        with `allow_failures` returns a result with `content=None` and `error` set. JudgeConfigError (rejected key,
        unknown model or endpoint, a body that is not JSON) is always raised: counting it would silently score nothing.
        A reply that `accept` rejects is asked again up to `max_retries` times, and never cached; the last one is
        returned with `accepted=False`."""
        return self._complete(
            messages, temperature=temperature, allow_failures=self.config.allow_failures, accept=accept
        )

    def _complete(
        self,
        messages: Any,
        *,
        temperature: float | None,
        allow_failures: bool,
        accept: Callable[[str], bool] | None = None,
    ) -> JudgeResult:
        messages, model = _check_messages(messages), self.config.model
        temperature = self.config.call_temperature(temperature)
        key = judge_cache_key(self.config.base_url, model, messages, temperature, self.config.max_tokens)
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            if accept is None or accept(hit[0]):
                self._count("cache_hits")
                return JudgeResult(content=hit[0], judge_model=model, served_model=hit[1], cached=True, attempts=0)
            self.cache.delete(key)  # written before replies were checked
        payload: dict[str, Any] = {"model": model, "messages": messages, "temperature": temperature}
        if self.config.max_tokens is not None:
            payload["max_tokens"] = self.config.max_tokens
        attempts = 0
        for asked in range(1, self.config.max_retries + 2):
            content, served_model, failure = self._chat_completion(payload)
            attempts += self._call.attempts
            if failure is not None:
                self._count("judge_failures")
                error = JudgeUnavailableError(
                    url=display_url(self.config.endpoint),
                    model=model,
                    attempts=attempts,
                    reason=failure,
                    setting_names=self.setting_names,
                )
                if not allow_failures:
                    raise error
                logger.warning("%s (counted as a judge failure because allow_failures is set)", error)
                return JudgeResult(content=None, judge_model=model, attempts=attempts, error=str(error))
            if accept is None or accept(content):
                break
            self._count("rejected_replies")
            if asked <= self.config.max_retries:
                logger.warning(
                    "LLM judge %s (model %r) gave an unusable reply (%d of %d tries); asking again: %r",
                    display_url(self.config.endpoint),
                    model,
                    asked,
                    self.config.max_retries + 1,
                    self._redact(content)[:_SERVER_TEXT_LIMIT],
                )
        else:
            return JudgeResult(
                content=content, judge_model=model, served_model=served_model, attempts=attempts, accepted=False
            )
        if self.cache is not None:
            self.cache.put(
                key,
                model=model,
                request={"base_url": display_url(self.config.base_url), **payload},
                reply=content,
                served_model=served_model,
            )
        return JudgeResult(content=content, judge_model=model, served_model=served_model, attempts=attempts)

    def complete(self, messages: list[dict[str, Any]], *, temperature: float | None = None) -> str:
        """The reply text. Always raises on failure (even with allow_failures, as there is no text
        to return); use `complete_result` or `complete_many` to have failures counted instead."""
        return self._complete(messages, temperature=temperature, allow_failures=False).content

    def complete_many(
        self,
        list_of_messages: Sequence[list[dict[str, Any]]],
        *,
        temperature: float | None = None,
        accept: Callable[[str], bool] | None = None,
    ) -> list[JudgeResult]:
        """Results in input order, `config.concurrency` calls at a time; identical requests are sent once. `accept`
        as in `complete_result`."""
        conversations = [_check_messages(messages) for messages in list_of_messages]
        key_temperature = self.config.call_temperature(temperature)
        keys = [
            judge_cache_key(self.config.base_url, self.config.model, messages, key_temperature, self.config.max_tokens)
            for messages in conversations
        ]
        unique = dict(zip(keys, conversations, strict=True))
        if not unique:
            return []
        with ThreadPoolExecutor(
            max_workers=min(self.config.concurrency, len(unique)), thread_name_prefix="judge"
        ) as pool:
            futures = {
                key: pool.submit(self.complete_result, messages, temperature=temperature, accept=accept)
                for key, messages in unique.items()
            }
            try:
                results = {key: future.result() for key, future in futures.items()}
            except BaseException:
                # Stop queued calls; the ones in flight finish before the error propagates.
                pool.shutdown(wait=False, cancel_futures=True)
                raise
        return [results[key] for key in keys]
