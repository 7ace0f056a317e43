"""The tested environment is requirements.lock; the ranges for other environments are pyproject.toml's and
`ue_dpo.versions.SUPPORTED`, checked before any harness code runs."""

import base64
import hashlib
import importlib.metadata
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from ue_dpo import versions

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import locked_env  # noqa: E402

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
REBUILD = "rm .venv/.installed && make test (or: python3 tools/locked_env.py sync)"


def installed_versions() -> dict[str, str]:
    return {locked_env.normalise(dist.metadata["Name"]): dist.version for dist in importlib.metadata.distributions()}


def test_the_installed_environment_is_the_lock():
    locked, installed = locked_env.locked_versions(), installed_versions()
    installed.pop("ue-dpo")
    differences = [
        f"{name}: locked {locked.get(name, '(not locked)')}, installed {installed.get(name, '(missing)')}"
        for name in sorted(set(locked) | set(installed))
        if locked.get(name) != installed.get(name)
    ]
    assert not differences, (
        "this environment is not requirements.lock; rebuild it: " + REBUILD + "\n  " + "\n  ".join(differences)
    )


def project_requirements() -> list[Requirement]:
    return [Requirement(line) for line in PROJECT["dependencies"] + PROJECT["optional-dependencies"]["test"]]


def test_the_lock_satisfies_every_range_of_pyproject():
    locked = locked_env.locked_versions()
    for requirement in project_requirements():
        name = locked_env.normalise(requirement.name)
        assert name in locked, f"{name} is in pyproject.toml but not in requirements.lock: make lock"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"requirements.lock pins {name}=={locked[name]}, outside pyproject.toml's {requirement}: make lock"
        )


def test_the_checked_ranges_are_pyprojects():
    declared = {locked_env.normalise(req.name): req.specifier for req in project_requirements()}
    for name, specifier in versions.SUPPORTED.items():
        assert declared[name] == SpecifierSet(specifier), (
            f"{name}: pyproject says {declared[name]}, versions.py {specifier}"
        )
    assert SpecifierSet(versions.SUPPORTED["filelock"]).contains("4.2.12")
    assert not SpecifierSet(versions.SUPPORTED["filelock"]).contains("4.3.1")


def fake_installed(directory: Path, name: str, version: str) -> Path:
    """A folder that, first on sys.path, makes importlib.metadata report `name` at `version`."""
    dist_info = directory / f"{name}-{version}.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return directory


@pytest.mark.parametrize("importing", ["lmms_eval", "llamafactory"])
def test_a_breaking_release_stops_the_harness_import_with_the_range_and_the_fix(tmp_path, importing):
    shadow = fake_installed(tmp_path, "filelock", "4.3.1")
    result = subprocess.run(
        [sys.executable, "-c", f"import {importing}"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(shadow), "PATH": ""},
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-3:] == [
        "ue_dpo.versions.UnsupportedVersionError: unsupported environment for ue-dpo:",
        "  filelock 4.3.1 is installed, but ue-dpo supports filelock>=3.16,<4.3",
        "Fix: pip install 'filelock>=3.16,<4.3'; in a checkout, `make test` builds the tested environment from "
        "requirements.lock.",
    ]
    assert f"site-packages/{importing}/" not in result.stderr  # stopped before any harness code ran


def test_the_cli_names_the_mismatch_without_a_traceback(tmp_path):
    shadow = fake_installed(tmp_path, "transformers", "5.7.0")
    result = subprocess.run(
        [Path(sys.executable).with_name("ue-dpo"), "shapes-eval", "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(shadow), "PATH": ""},
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "transformers 5.7.0 is installed, but ue-dpo supports transformers>=5.6,<5.7" in result.stderr
    assert not (tmp_path / "x").exists()


def test_an_unsupported_harness_release_is_named_with_its_range(monkeypatch):
    monkeypatch.setattr(versions, "version", lambda name: "0.9.4" if name == "llamafactory" else "5.6.0")
    with pytest.raises(
        versions.UnsupportedVersionError,
        match=r"llamafactory 0.9.4 is installed, but ue-dpo supports llamafactory>=0.9.5,<0.9.6",
    ):
        versions.check_supported("llamafactory")


def write_wheel(directory: Path, name: str, version: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    files = {
        f"{name}/__init__.py": "",
        f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{name}-{version}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = []
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, content in files.items():
            archive.writestr(path, content)
            digest = base64.urlsafe_b64encode(hashlib.sha256(content.encode()).digest()).rstrip(b"=").decode()
            record.append(f"{path},sha256={digest},{len(content)}")
        record.append(f"{name}-{version}.dist-info/RECORD,,")
        archive.writestr(f"{name}-{version}.dist-info/RECORD", "\n".join(record) + "\n")
    return wheel


@pytest.fixture
def local_index(tmp_path):
    """A PEP 503 index on disk whose only release, lockcheck 1.0, is yanked; and a venv that has uv."""
    wheel = write_wheel(tmp_path / "files", "lockcheck", "1.0")
    project = tmp_path / "simple" / "lockcheck"
    project.mkdir(parents=True)
    (tmp_path / "simple" / "index.html").write_text('<html><body><a href="lockcheck/">lockcheck</a></body></html>')
    (project / "index.html").write_text(
        f'<html><body><a href="../../files/{wheel.name}" data-yanked="broken">{wheel.name}</a></body></html>'
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    (venv / "bin" / "uv").symlink_to(Path(sys.executable).with_name("uv"))
    return tmp_path


@pytest.mark.parametrize(
    ("pin", "expected"),
    [
        ("lockcheck==1.0", "requirements.lock pins a yanked release: lockcheck==1.0."),
        ("lockcheck==2.0", "requirements.lock no longer installs: lockcheck==2.0."),
    ],
)
def test_a_lock_that_no_longer_resolves_stops_the_install_naming_the_package(local_index, pin, expected):
    lock = local_index / "requirements.lock"
    lock.write_text(pin + "\n")
    result = subprocess.run(
        [
            sys.executable,
            REPO / "tools" / "locked_env.py",
            "sync",
            "--venv",
            local_index / "venv",
            "--lock",
            lock,
            "--no-editable",
        ],
        capture_output=True,
        text=True,
        env={
            "UV_DEFAULT_INDEX": (local_index / "simple").as_uri(),
            "PATH": "",
            "UV_CACHE_DIR": str(local_index / "uv_cache"),
            "UV_OFFLINE": "0",
        },
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {expected} Refresh the lock: make lock && make test, then commit requirements.lock."
    )


def test_the_refresh_command_resolves_a_lock_within_pyprojects_ranges(tmp_path):
    """`make lock` runs this, writing requirements.lock; here it writes a copy. Needs the package index."""
    fresh = tmp_path / "requirements.lock"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    (venv / "bin" / "uv").symlink_to(Path(sys.executable).with_name("uv"))
    subprocess.run(
        [sys.executable, REPO / "tools" / "locked_env.py", "lock", "--venv", venv, "--lock", fresh],
        check=True,
        capture_output=True,
    )
    assert fresh.read_text().startswith(
        "# This file was autogenerated by uv via the following command:\n#    make lock\n"
    )
    pins = locked_env.locked_versions(fresh)
    for requirement in project_requirements():
        assert requirement.specifier.contains(pins[locked_env.normalise(requirement.name)], prereleases=True)
