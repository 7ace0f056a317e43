"""The README's training YAML and the key tables of the docs, read as the tests compare them with what
LLaMA-Factory's parser resolves (tests/test_docs.py; the parse itself is conftest.py's `llamafactory_parsed`)."""

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
README_HEADING = "## Training: a YAML and its keys"


def readme_training_yaml() -> dict:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index(README_HEADING) :]
    start = section.index("```yaml\n") + len("```yaml\n")
    return yaml.safe_load(section[start : section.index("```", start)])


def key_defaults(path: Path, heading: str) -> dict[str, str]:
    """key -> default, from the `| key | default | meaning |` tables of the section under the heading."""
    text = path.read_text()
    section = text[text.index(heading) :]
    section = section[: section.index("\n## ", 1)]
    return dict(re.findall(r"^\| `(\w+)` \| ([^|]+?) \|", section, re.MULTILINE))


def readme_configs() -> dict[str, dict]:
    """The README's training YAML as written (`readme.yaml`) and without the keys of its key table
    (`defaults.yaml`), so that the parser fills those in with their defaults."""
    config = readme_training_yaml()
    shown = key_defaults(REPO / "README.md", README_HEADING)
    return {
        "readme.yaml": config,
        "defaults.yaml": {key: value for key, value in config.items() if key not in shown},
    }
