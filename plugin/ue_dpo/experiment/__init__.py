"""YAML experiments: train runs with LLaMA-Factory, evaluate them with lmms-eval, compare them in one table."""

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # ue_dpo/
EMBEDDED_DEFAULT_NAME = "embedded_default.yaml"
# In a wheel the file sits in the package (pyproject force-include); in a source checkout, under configs/.
_EMBEDDED_DEFAULT_CANDIDATES = (
    _PACKAGE_DIR / "experiment" / EMBEDDED_DEFAULT_NAME,
    _PACKAGE_DIR.parents[1] / "configs" / "experiments" / EMBEDDED_DEFAULT_NAME,
)


def embedded_default_path() -> Path:
    """The experiment file of `make demo` / `ue-dpo demo`."""
    for candidate in _EMBEDDED_DEFAULT_CANDIDATES:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"the embedded default experiment is in none of "
        f"{[str(path) for path in _EMBEDDED_DEFAULT_CANDIDATES]}; reinstall ue-dpo"
    )
