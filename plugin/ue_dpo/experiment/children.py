"""Child processes that die with `ue-dpo run`, however it dies: the one way the plugin starts a process.

`start_child(command, ...)` is `subprocess.Popen` with the command in a process group of its own (so that signals
can be passed on to the whole group) and two guards for when we die without stopping it ourselves, SIGKILL and
the OOM killer included:

- on Linux the child is killed as we die (`prctl(PR_SET_PDEATHSIG, SIGKILL)`, set before it execs);
- a small watchdog process kills the child's whole group once we are gone, so the processes the child started in
  turn (an inference server's engine workers, torchrun's ranks) do not outlive us either. It exits by itself once
  the group is empty.

Before the watchdog, `ue-dpo run` killed with SIGKILL during a served evaluation left the inference server running,
reparented to PID 1 (issue 24, item 2).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

WATCH_INTERVAL_S = 0.2
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None

# Run as `python -I -S -c _WATCHDOG <group> <parent pid>`, in a session of its own so that the terminal's Ctrl-C
# and signals sent to our group leave it alone: polls for our death (its parent changes), then kills the group.
_WATCHDOG = f"""
import os, signal, sys, time
group, parent = int(sys.argv[1]), int(sys.argv[2])
while True:
    if os.getppid() != parent:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
        break
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        break
    time.sleep({WATCH_INTERVAL_S})
"""


class Child(subprocess.Popen):
    """What start_child returns: a Popen whose wait() also retires the watchdog once the child's group is empty."""

    watchdog: subprocess.Popen | None = None

    def wait(self, timeout: float | None = None) -> int:
        returncode = super().wait(timeout)
        if self.watchdog is not None and not _group_alive(self.pid):
            self.watchdog.kill()
            self.watchdog.wait()
            self.watchdog = None
        return returncode


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def _die_with_parent() -> None:
    """In the child, before exec: be killed when the process that started it dies. Only calls a function resolved
    before the fork, so that it is safe with threads. (The kernel means the starting thread: start children from a
    thread that lives as long as they should.)"""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))


def start_child(command: Sequence[str], **popen_kwargs: Any) -> Child:
    """`subprocess.Popen(command, **popen_kwargs)` in a new process group (its id is the child's pid) that is
    killed when this process dies. Raises what Popen raises (OSError when the command cannot start)."""
    child = Child(
        list(command),
        start_new_session=True,
        preexec_fn=_die_with_parent,  # noqa: PLW1509
        **popen_kwargs,
    )
    child.watchdog = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", _WATCHDOG, str(child.pid), str(os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return child
