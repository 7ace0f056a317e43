"""The releases of the libraries whose internals we, LLaMA-Factory or lmms-eval rely on, checked at start.

`ue_dpo._autoload` runs `check_supported()` before `llamafactory` or `lmms_eval` executes, and `ue-dpo` before
any command, so a mismatched environment stops with the package, its range and the fix instead of a
traceback deep inside a harness. The ranges are pyproject.toml's (a test keeps the two equal); the
tested environment itself is requirements.lock.
"""

from importlib.metadata import PackageNotFoundError, version

from packaging.specifiers import SpecifierSet
from packaging.version import Version

SUPPORTED = {
    # we patch their argument parser, stage dispatch, data pipeline (the peer methods' image columns) and task discovery
    "llamafactory": ">=0.9.5,<0.9.6",
    "lmms-eval": ">=0.7.3,<0.7.4",
    # filelock 4.3 removed `filelock._api`, which lmms-eval 0.7.3 imports
    "filelock": ">=3.16,<4.3",
    # model, processor and trainer internals the stage and the tiny models use
    "transformers": ">=5.6,<5.7",
    "trl": ">=0.24,<0.25",
    "peft": ">=0.18,<0.19",
    "accelerate": ">=1.11,<1.12",
    "datasets": ">=4.0,<4.1",
    # the official benchmark code paths (tokenisation, lemmas, WordNet)
    "nltk": ">=3.9,<3.11",
    "spacy": ">=3.7,<3.9",
}


class UnsupportedVersionError(RuntimeError):
    pass


def unsupported(distributions=()) -> dict[str, str]:
    """Distribution -> what is wrong, for each one that is missing or outside its supported range."""
    problems = {}
    for distribution in distributions or SUPPORTED:
        specifier = SUPPORTED[distribution]
        try:
            installed = version(distribution)
        except PackageNotFoundError:
            problems[distribution] = f"{distribution}{specifier} is not installed"
            continue
        if Version(installed) not in SpecifierSet(specifier):
            problems[distribution] = (
                f"{distribution} {installed} is installed, but ue-dpo supports {distribution}{specifier}"
            )
    return problems


def check_supported(*distributions: str) -> None:
    """Fail naming every unsupported release among `distributions` (default: all of SUPPORTED) and the fix."""
    problems = unsupported(distributions)
    if problems:
        requirements = " ".join(f"'{name}{SUPPORTED[name]}'" for name in problems)
        raise UnsupportedVersionError(
            "unsupported environment for ue-dpo:\n  "
            + "\n  ".join(problems.values())
            + f"\nFix: pip install {requirements}; in a checkout, `make test` builds the tested environment from "
            "requirements.lock."
        )
