"""Checks of one argument's value, with a message that names the key and what it must be."""

from typing import Any


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"`{name}: {value}` is not supported; use one of: {', '.join(allowed)}.")


def check_number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"`{name}: {value!r}` must be a number.")


def check_integer(name: str, value: Any, expected: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"`{name}: {value!r}` must be {expected}, not a {type(value).__name__}.")
