"""Stage bookkeeping of `ue-dpo run`: config digests, marker files, and subprocesses streamed to a log."""

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


class StageError(RuntimeError):
    """A stage failed; the message names the stage, the cause and the log to read."""


def digest(*parts: Any) -> str:
    canonical = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class Markers:
    """`<output>/state/<stage>.json`: a stage is finished when its marker holds the digest of its current config."""

    def __init__(self, output: Path):
        self.dir = Path(output) / "state"

    def path(self, stage: str, kind: str = "done") -> Path:
        return self.dir / f"{stage}.{kind}.json"

    def read(self, stage: str, kind: str = "done") -> dict[str, Any] | None:
        path = self.path(stage, kind)
        return json.loads(path.read_text()) if path.is_file() else None

    def matches(self, stage: str, stage_digest: str, kind: str = "done") -> bool:
        marker = self.read(stage, kind)
        return marker is not None and marker["digest"] == stage_digest

    def write(self, stage: str, stage_digest: str, kind: str = "done", **details: Any) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        record = {"digest": stage_digest, "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **details}
        self.path(stage, kind).write_text(json.dumps(record, indent=1, default=str))


def stream(command: Sequence[str], *, env: Mapping[str, str], log_path: Path, cwd: Path | None = None) -> int:
    """Run `command`, copying its stdout and stderr (progress bars included) to ours and to `log_path`.

    The child is terminated when we are interrupted, so a killed `ue-dpo run` leaves no training behind.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n$ {' '.join(command)}\n".encode())
        child = subprocess.Popen(list(command), env=dict(env), cwd=cwd, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT)
        try:
            while chunk := os.read(child.stdout.fileno(), 65536):
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
                log.write(chunk)
            return child.wait()
        except BaseException:
            child.terminate()
            child.wait()
            raise
        finally:
            child.stdout.close()
