"""Checks of one argument's value, with a message that names the key and what it must be."""

from typing import Any


class UEDPOUserError(ValueError):
    """Bad input to `stage: ue_dpo` (a key's value, a row of the data), with a message that names it and the fix.

    Under `llamafactory-cli train` it is printed alone, without the traceback (ue_dpo.llamafactory.integration);
    any other exception is a bug and keeps its traceback. A ValueError, so `except ValueError` still catches it.
    """


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UEDPOUserError(f"`{name}: {value}` is not supported; use one of: {', '.join(allowed)}.")


def check_number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UEDPOUserError(f"`{name}: {value!r}` must be a number.")


def check_integer(name: str, value: Any, expected: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UEDPOUserError(f"`{name}: {value!r}` must be {expected}, not a {type(value).__name__}.")
