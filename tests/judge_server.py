"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1 for judge tests.

    with ScriptedJudgeServer(lambda payload: "Rating: 4") as server:
        client = JudgeClient(JudgeConfig(model="judge", base_url=server.base_url))

The reply function gets the request payload and returns the reply text, a `ScriptedHTTPError`
to answer with an HTTP error, or a `ScriptedBody` to answer with any body (a proxy's HTML page).
`fail_first` answers the first N requests with `fail_status` (500 by default: the server is "down"
for a while). The server counts requests, remembers payloads and Authorization headers, tracks
the most requests in flight at once, refuses to serve more than `max_requests` (a runaway retry
loop ends), and shuts itself down after `lifetime_seconds` even if a test forgets to.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LOOPBACK = "127.0.0.1"


@dataclasses.dataclass
class ScriptedHTTPError:
    status: int
    body: str = '{"error": {"message": "scripted failure", "type": "server_error"}}'
    retry_after: str | None = None


@dataclasses.dataclass
class ScriptedBody:
    """A raw answer: `body` as it is, with `content_type` (what a web page or a misconfigured proxy sends)."""

    body: str
    content_type: str = "text/html; charset=utf-8"
    status: int = 200


ReplyFunction = Callable[[dict[str, Any]], "str | ScriptedHTTPError | ScriptedBody"]


def last_user_text(payload: dict[str, Any]) -> str:
    return payload["messages"][-1]["content"]


def unused_loopback_url() -> str:
    """A /v1 URL on a loopback port nothing listens on (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port = probe.getsockname()[1]
    return f"http://{LOOPBACK}:{port}/v1"


class ScriptedJudgeServer:
    def __init__(
        self,
        reply: ReplyFunction = lambda payload: "Rating: 3",
        *,
        fail_first: int = 0,
        fail_status: int = 500,
        delay_seconds: float = 0.0,
        max_requests: int = 500,
        lifetime_seconds: float = 60.0,
    ):
        self.reply = reply
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.delay_seconds = delay_seconds
        self.max_requests = max_requests
        self.lifetime_seconds = lifetime_seconds
        self.payloads: list[dict[str, Any]] = []
        self.authorization_headers: list[str | None] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._port: int | None = None
        self._serve_thread: threading.Thread | None = None
        self._deadline_timer: threading.Timer | None = None

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.payloads)

    @property
    def base_url(self) -> str:
        assert self._port is not None, "start the server first"
        return f"http://{LOOPBACK}:{self._port}/v1"

    def _respond(self, payload: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            self.payloads.append(payload)
            number = len(self.payloads)
        if number > self.max_requests:
            return 503, {}, b'{"error": {"message": "test server request budget exhausted"}}'
        if number <= self.fail_first:
            return self.fail_status, {}, b'{"error": {"message": "scripted outage"}}'
        outcome = self.reply(payload)
        if isinstance(outcome, ScriptedHTTPError):
            headers = {"Retry-After": outcome.retry_after} if outcome.retry_after is not None else {}
            return outcome.status, headers, outcome.body.encode("utf-8")
        if isinstance(outcome, ScriptedBody):
            return outcome.status, {"Content-Type": outcome.content_type}, outcome.body.encode("utf-8")
        completion = {
            "id": f"chatcmpl-test-{number}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": payload.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": outcome}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
        return 200, {}, json.dumps(completion).encode("utf-8")

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def finish_request_count(self) -> None:
                # before the body is written: once a client has the body it may send its next request, which a
                # count still holding this one would see as one more in flight
                with server._lock:
                    if self.counted:
                        server._in_flight -= 1
                        self.counted = False

            def do_POST(self) -> None:
                with server._lock:
                    server._in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server._in_flight)
                self.counted = True
                try:
                    length = int(self.headers.get("Content-Length", "0"))
                    payload = json.loads(self.rfile.read(length))
                    with server._lock:
                        server.authorization_headers.append(self.headers.get("Authorization"))
                    if self.path != "/v1/chat/completions":
                        status, headers, body = 404, {}, b'{"error": {"message": "no such route"}}'
                    else:
                        if server.delay_seconds:
                            time.sleep(server.delay_seconds)
                        status, headers, body = server._respond(payload)
                    self.send_response(status)
                    headers = {"Content-Type": "application/json", **headers}
                    self.send_header("Content-Length", str(len(body)))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.finish_request_count()
                    self.wfile.write(body)
                finally:
                    self.finish_request_count()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def start(self) -> ScriptedJudgeServer:
        self._httpd = ThreadingHTTPServer((LOOPBACK, 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._port = self._httpd.server_address[1]
        self._serve_thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._serve_thread.start()
        self._deadline_timer = threading.Timer(self.lifetime_seconds, self.stop)
        self._deadline_timer.daemon = True
        self._deadline_timer.start()
        return self

    def stop(self) -> None:
        if self._deadline_timer is not None and self._deadline_timer is not threading.current_thread():
            self._deadline_timer.cancel()
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()

    def __enter__(self) -> ScriptedJudgeServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
