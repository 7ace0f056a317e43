"""Issue 24, item 2: every process the plugin starts dies with its parent however the parent dies, SIGKILL included.

Each test runs a parent Python process that starts children the plugin's way, reads their pids from its stdout,
SIGKILLs it and waits (bounded) for the children to be gone. Servers bind loopback only.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")

PLUGIN = Path(__file__).resolve().parents[1] / "plugin"
GONE_WITHIN_S = 10.0


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie that its new parent has not reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def start_parent(script: str) -> tuple[subprocess.Popen, list[str]]:
    """Run `script` in a parent process until it prints a line starting with READY; returns it and that line's words."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PLUGIN), os.environ.get("PYTHONPATH")]))}
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    line = parent.stdout.readline()
    if not line.startswith("READY"):
        parent.kill()
        pytest.fail(f"the parent did not start its children: {line}{parent.communicate(timeout=30)[1][-3000:]}")
    return parent, line.split()[1:]


def kill_parent_and_wait(parent: subprocess.Popen, pids: list[int]) -> list[int]:
    """SIGKILL `parent`; the pids still running after GONE_WITHIN_S (killed here, so that nothing is left)."""
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=30)
    deadline = time.monotonic() + GONE_WITHIN_S
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [pid for pid in pids if alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return left


SLEEPER = "[sys.executable, '-c', 'import time; time.sleep(120)']"


def test_a_child_and_the_processes_it_started_die_when_the_parent_is_killed():
    parent, words = start_parent(f"""
        import subprocess, sys, time
        from ue_dpo.experiment.children import start_child
        child = start_child([sys.executable, '-c', '''
        import subprocess, sys, time
        grandchild = subprocess.Popen({SLEEPER})
        print(grandchild.pid, flush=True)
        time.sleep(120)
        '''], stdout=subprocess.PIPE, text=True)
        print('READY', child.pid, child.stdout.readline().strip(), flush=True)
        time.sleep(120)
    """)
    child, grandchild = map(int, words)
    assert alive(child) and alive(grandchild)
    assert kill_parent_and_wait(parent, [child, grandchild]) == []


def test_the_inference_server_dies_when_ue_dpo_run_is_killed_during_a_served_evaluation(tmp_path):
    """Before: the server was reparented to PID 1 and kept its port (and, with vLLM, the GPUs)."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "health").write_text("ok")
    parent, words = start_parent(f"""
        import os, sys, time
        from pathlib import Path
        from ue_dpo.experiment.server import served_model
        template = sys.executable + ' -m http.server {{port}} --bind 127.0.0.1 --directory {{model}}'
        with served_model(template, {str(model)!r}, log_path=Path({str(tmp_path / "server.log")!r}), env=os.environ,
                          health_timeout_s=60) as url:
            print('READY', url, flush=True)
            time.sleep(120)
    """)
    (url,) = words
    with urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=10) as response:
        assert response.read() == b"ok"
    servers = [pid for pid in children_of(parent.pid) if "http.server" in Path(f"/proc/{pid}/cmdline").read_text()]
    assert len(servers) == 1
    assert kill_parent_and_wait(parent, servers) == [], "the server outlived `ue-dpo run`"


def test_the_stage_command_and_what_it_started_die_when_ue_dpo_run_is_killed(tmp_path):
    parent, words = start_parent(f"""
        import os, sys
        from pathlib import Path
        from ue_dpo.experiment.stages import stream
        stream([sys.executable, '-c', '''
        import subprocess, sys, time
        worker = subprocess.Popen({SLEEPER})
        print('READY', __import__('os').getpid(), worker.pid, flush=True)
        time.sleep(120)
        '''], env=os.environ, log_path=Path({str(tmp_path / "stage.log")!r}))
    """)
    command, worker = map(int, words)
    assert alive(command) and alive(worker)
    assert kill_parent_and_wait(parent, [command, worker]) == []


def test_the_watchdog_ends_with_the_child_so_that_a_stopped_run_leaves_nothing_behind():
    from ue_dpo.experiment.children import start_child

    child = start_child([sys.executable, "-c", "pass"])
    watchdog = child.watchdog
    assert watchdog is not None and watchdog.poll() is None
    assert child.wait(timeout=30) == 0
    assert child.watchdog is None and watchdog.returncode is not None
