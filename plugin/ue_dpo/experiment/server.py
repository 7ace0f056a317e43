"""An inference server for one model, started from a command template, for as long as an evaluation needs it.

`served_model("vllm serve {model} --tensor-parallel-size 8 --port {port}", model_dir, log_path=...)` picks a
free loopback port, starts the command (no shell; `{model}` and `{port}` filled in), waits until
`http://127.0.0.1:{port}/health` answers 200 and yields the OpenAI base URL (`.../v1`). The server is stopped
(its whole process group: SIGTERM, then SIGKILL) when the block ends, on an error and on Ctrl-C. A server that
exits because its port was taken in the meantime is restarted on another port; one that exits otherwise, or is
not healthy within the timeout, is stopped and its log tail shown. The server dies with us however we die
(children.start_child).
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from ue_dpo.experiment.children import start_child
from ue_dpo.experiment.stages import StageError

HOST = "127.0.0.1"
HEALTH_PATH = "/health"  # vLLM, SGLang and `transformers serve` all answer it
PORT_ATTEMPTS = 3
LOG_TAIL_LINES = 30
STOP_GRACE_S = 15.0
_PORT_IN_USE = ("address already in use", "errno 98", "port is already in use")


class ServerError(StageError):
    """The server did not start or stay up; the message holds its command and log tail."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def server_command(template: str, model: str, port: int) -> list[str]:
    """The argv of `template` with `{model}` and `{port}` filled in (each one argument, however it is spelt)."""
    return [part.replace("{model}", model).replace("{port}", str(port)) for part in shlex.split(template)]


def log_tail(log_path: Path, lines: int = LOG_TAIL_LINES) -> str:
    text = log_path.read_text(errors="replace") if log_path.is_file() else ""
    return "\n".join(text.splitlines()[-lines:]) or "(the server wrote nothing)"


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(child: subprocess.Popen) -> None:
    """Stop the server's whole process group (engine workers included, even if the server itself has exited)."""
    try:
        os.killpg(child.pid, signal.SIGTERM)
    except ProcessLookupError:
        child.wait()
        return
    try:
        child.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()


@contextmanager
def served_model(
    template: str, model: str, *, log_path: Path, env: Mapping[str, str], health_timeout_s: float
) -> Iterator[str]:
    """Serve `model` with the command `template` while the block runs; yields the OpenAI base URL."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, PORT_ATTEMPTS + 1):
        port = free_port()
        command = server_command(template, model, port)
        with open(log_path, "ab") as log:
            log.write(f"\n$ {shlex.join(command)}\n".encode())
            log.flush()
            try:
                child = start_child(
                    command, env=dict(env), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                )
            except OSError as error:
                raise ServerError(f"the server command {shlex.join(command)!r} could not start: {error}") from None
        try:
            deadline = time.monotonic() + health_timeout_s
            while not _healthy(f"http://{HOST}:{port}{HEALTH_PATH}"):
                if child.poll() is not None:
                    tail = log_tail(log_path)
                    if attempt < PORT_ATTEMPTS and any(sign in tail.lower() for sign in _PORT_IN_USE):
                        print(f"    port {port} was taken before the server bound it; trying another port", flush=True)
                        break
                    raise ServerError(
                        f"the server exited with status {child.returncode} before it was healthy: "
                        f"{shlex.join(command)}\n--- last lines of {log_path} ---\n{tail}"
                    )
                if time.monotonic() > deadline:
                    _stop(child)
                    raise ServerError(
                        f"the server was not healthy at http://{HOST}:{port}{HEALTH_PATH} after "
                        f"{health_timeout_s:.0f} s, so it was stopped: {shlex.join(command)}\n"
                        f"--- last lines of {log_path} ---\n{log_tail(log_path)}"
                    )
                time.sleep(0.5)
            else:
                yield f"http://{HOST}:{port}/v1"
                return
        finally:
            _stop(child)
