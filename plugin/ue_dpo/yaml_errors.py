"""PyYAML's syntax errors as one line, for messages that name the file or flag and the fix."""

import yaml


def describe_yaml_error(error: yaml.YAMLError) -> str:
    """PyYAML's explanation on one line, with 1-based line and column numbers."""
    parts = []
    for text, mark in (
        (getattr(error, "context", None), getattr(error, "context_mark", None)),
        (getattr(error, "problem", None), getattr(error, "problem_mark", None)),
    ):
        if text:
            parts.append(text + (f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""))
    return ": ".join(parts) or str(error)
