"""Build .venv/ from requirements.lock (`sync`), or refresh the lock from pyproject.toml's ranges (`lock`).

Run by `make demo`, `make test` and `make lock` with the system Python; it needs nothing but the standard
library. uv, pinned in the lock itself, is installed into the venv with pip and does the rest.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.lock"
PYTHON_VERSION = "3.11"
PLATFORM = "x86_64-manylinux_2_28"
REFRESH = "make lock && make test, then commit requirements.lock"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)", re.MULTILINE)


class SetupError(RuntimeError):
    pass


def locked_versions(lock: Path = LOCK) -> dict[str, str]:
    """Normalised distribution name -> pinned version."""
    return {normalise(name): version for name, version in _PIN.findall(lock.read_text())}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(part) for part in command], text=True, **kwargs)


def ensure_uv(venv: Path, uv_version: str | None) -> Path:
    """A venv at `venv` holding uv (at `uv_version` when given); returns the uv executable."""
    python = venv / "bin" / "python"
    if not python.exists():
        _run([sys.executable, "-m", "venv", venv], check=True)
    installed = _run(
        [python, "-c", f"import sys; assert sys.version_info[:2] == {tuple(map(int, PYTHON_VERSION.split('.')))}"],
        capture_output=True,
    )
    if installed.returncode != 0:
        raise SetupError(
            f"{venv} runs another Python than the lock's {PYTHON_VERSION}: remove {venv} and run again "
            f"with PYTHON=python{PYTHON_VERSION} (make PYTHON=python{PYTHON_VERSION} test)"
        )
    uv = venv / "bin" / "uv"
    current = _run([uv, "--version"], capture_output=True).stdout.split()[1:2] if uv.exists() else []
    if not uv.exists() or (uv_version is not None and current != [uv_version]):
        requirement = f"uv=={uv_version}" if uv_version else "uv"
        _run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", requirement], check=True)
    return uv


def _named_in(output: str, pins: dict[str, str]) -> list[str]:
    """The locked `name==version` pins that uv's output mentions."""
    text = normalise(output)
    return [f"{name}=={version}" for name, version in sorted(pins.items()) if f"{name}=={normalise(version)}" in text]


def sync(venv: Path, lock: Path = LOCK, editable: Path | None = REPO) -> None:
    if sys.version_info[:2] != tuple(map(int, PYTHON_VERSION.split("."))):
        raise SetupError(
            f"requirements.lock is for Python {PYTHON_VERSION}, but {sys.executable} is "
            f"{sys.version.split()[0]}: run with PYTHON=python{PYTHON_VERSION}"
        )
    pins = locked_versions(lock)
    uv = ensure_uv(venv, pins.get("uv"))
    python = venv / "bin" / "python"
    result = _run([uv, "pip", "sync", "--python", python, lock], capture_output=True)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    yanked = [line for line in result.stderr.splitlines() if "is yanked" in line]
    if result.returncode != 0 or yanked:
        named = _named_in("\n".join(yanked) if yanked else result.stderr, pins)
        what = "pins a yanked release" if yanked else "no longer installs"
        raise SetupError(
            f"{lock.name} {what}: {', '.join(named) or 'see the uv output above'}. Refresh the lock: {REFRESH}."
        )
    if editable is not None:
        _run(
            [uv, "pip", "install", "--quiet", "--python", python, "--no-deps", "--no-build-isolation", "-e", editable],
            check=True,
        )


def lock(venv: Path, lock_file: Path = LOCK) -> None:
    pins = locked_versions(lock_file) if lock_file.exists() else {}
    uv = ensure_uv(venv, pins.get("uv"))
    _run(
        [
            uv,
            "pip",
            "compile",
            REPO / "pyproject.toml",
            "--extra",
            "test",
            "--upgrade",
            "--python-version",
            PYTHON_VERSION,
            "--python-platform",
            PLATFORM,
            "--custom-compile-command",
            "make lock",
            "--output-file",
            lock_file,
        ],
        check=True,
        cwd=REPO,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=["sync", "lock"])
    parser.add_argument("--venv", type=Path, default=REPO / ".venv")
    parser.add_argument("--lock", type=Path, default=LOCK)
    parser.add_argument("--no-editable", action="store_true", help="install only the lock, not this checkout")
    args = parser.parse_args(argv)
    try:
        if args.command == "sync":
            sync(args.venv, args.lock, editable=None if args.no_editable else REPO)
        else:
            lock(args.venv, args.lock)
    except SetupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as error:
        print(f"error: {' '.join(map(str, error.cmd))} failed (exit {error.returncode})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
