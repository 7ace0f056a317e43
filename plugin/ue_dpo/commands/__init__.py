"""Subcommands of `ue-dpo`. Each module defines `register(subparsers)` and imports heavy libraries only in its handler.

A user error (bad input, with a message that names the flag, file or variable and the fix) is printed alone and exits
with `USER_ERROR_STATUS`, as argparse does for a bad flag; any other exception is a bug and keeps its traceback.
"""

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

USER_ERROR_STATUS = 2


def exit_with_user_error(command: str, error: BaseException | str) -> NoReturn:
    print(f"ue-dpo {command}: error: {error}", file=sys.stderr, flush=True)
    raise SystemExit(USER_ERROR_STATUS)


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse `type`: an integer >= `minimum`, else argparse's usage error naming the flag."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return value

    return parse
