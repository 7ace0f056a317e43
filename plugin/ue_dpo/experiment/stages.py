"""Stage bookkeeping of `ue-dpo run`: config digests, marker files, and subprocesses streamed to a log."""

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ue_dpo.experiment.children import start_child
from ue_dpo.experiment.layout import ExperimentLayout


class StageError(RuntimeError):
    """A stage failed; the message names the stage, the cause and the log to read."""


def digest(*parts: Any) -> str:
    canonical = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def weights_identity(model: str, *, with_base: bool = True) -> dict[str, Any] | None:
    """What tells the weights at the local path `model` apart: the name, size and modification time of each file at
    a folder's top level (what `from_pretrained` reads), and of its base model's when it is a LoRA adapter, so that
    weights replaced in place are evaluated again. None for a path that does not exist (a hub id)."""
    path = Path(model)
    if not path.exists():
        return None
    files = [path] if path.is_file() else sorted(item for item in path.iterdir() if item.is_file())
    stats = {item.name: item.stat() for item in files}
    identity: dict[str, Any] = {"files": {name: [stat.st_size, stat.st_mtime_ns] for name, stat in stats.items()}}
    adapter_config = path / "adapter_config.json"
    if with_base and adapter_config.is_file():
        try:
            base = json.loads(adapter_config.read_text()).get("base_model_name_or_path")
        except (ValueError, AttributeError):  # not ours to refuse here: evaluation names a broken adapter
            base = None
        if isinstance(base, str) and base:
            identity["base"] = {"model": base, **(weights_identity(base, with_base=False) or {})}
    return identity


class Markers:
    """`<output>/state/<stage>.json`: a stage is finished when its marker holds the digest of its current config.

    With `home`, each stage's marker is in `home(stage)/state/` instead (the stages of a sweep's cells, each in the
    folder of the swept values it reads); one Markers then holds each finished stage to one digest, so that two cells
    that disagree on a stage they share stop the run instead of redoing it in turn.
    """

    def __init__(
        self, output: Path, home: Callable[[str], Path] | None = None, finished: dict[Path, str] | None = None
    ):
        self.dir = ExperimentLayout(output).state
        self.home = home
        # with `home`: marker -> the digest a cell found or wrote (`finished`: one dict for every cell of a run)
        self.finished: dict[Path, str] = {} if finished is None else finished

    def path(self, stage: str, kind: str = "done") -> Path:
        folder = self.dir if self.home is None else ExperimentLayout(self.home(stage)).state
        return folder / f"{stage}.{kind}.json"

    def read(self, stage: str, kind: str = "done") -> dict[str, Any] | None:
        path = self.path(stage, kind)
        return json.loads(path.read_text()) if path.is_file() else None

    def matches(self, stage: str, stage_digest: str, kind: str = "done") -> bool:
        if kind == "done":
            self._check_held(stage, stage_digest)
        marker = self.read(stage, kind)
        matched = marker is not None and marker["digest"] == stage_digest
        if matched and kind == "done" and self.home is not None:
            self.finished[self.path(stage)] = stage_digest
        return matched

    def write(self, stage: str, stage_digest: str, kind: str = "done", **details: Any) -> None:
        path = self.path(stage, kind)
        if kind == "done":
            self._check_held(stage, stage_digest)
            if self.home is not None:
                self.finished[path] = stage_digest
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"digest": stage_digest, "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **details}
        path.write_text(json.dumps(record, indent=1, default=str))

    def _check_held(self, stage: str, stage_digest: str) -> None:
        held = self.finished.get(self.path(stage))
        if held is not None and held != stage_digest:
            raise StageError(
                f"stage {stage} in {self.path(stage).parent.parent} is shared by cells that give it different configs "
                f"(digests {held} and {stage_digest}); this is a bug of ue-dpo's sweep: please report it with the "
                f"experiment file"
            )


# Signals that stop `ue-dpo run`: each is passed on to the running stage's processes, which are then waited for.
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class RunInterrupted(Exception):
    """`ue-dpo run` got SIGINT, SIGTERM or SIGHUP: the stage's processes were stopped and waited for."""

    def __init__(self, signal_number: int, command: Sequence[str], log_path: Path):
        self.signal_number = signal_number
        super().__init__(
            f"interrupted by {signal.Signals(signal_number).name}: `{' '.join(command)}` was stopped "
            f"(its log: {log_path})"
        )


def stream(command: Sequence[str], *, env: Mapping[str, str], log_path: Path, cwd: Path | None = None) -> int:
    """Run `command`, copying its stdout and stderr (progress bars included) to ours and to `log_path`.

    The command runs in a process group of its own. SIGINT, SIGTERM and SIGHUP sent to us are passed on to that
    group (a second one kills it), and once it has exited this raises RunInterrupted, so the caller never marks the
    stage finished. SIGKILL cannot be passed on: the command's process group is then killed with us (see
    children.start_child).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n$ {' '.join(command)}\n".encode())
        child = start_child(
            command, env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        received: list[int] = []

        def forward(signal_number: int, frame: Any) -> None:
            received.append(signal_number)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal_number if len(received) == 1 else signal.SIGKILL)

        previous = {signal_number: signal.signal(signal_number, forward) for signal_number in FORWARDED_SIGNALS}
        try:
            while chunk := os.read(child.stdout.fileno(), 65536):
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
                log.write(chunk)
            returncode = child.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)
            child.wait()
            raise
        finally:
            for signal_number, handler in previous.items():
                signal.signal(signal_number, handler)
            child.stdout.close()
    if received:
        raise RunInterrupted(received[0], command, log_path)
    return returncode
