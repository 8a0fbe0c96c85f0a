"""Errors that reach the user as one line (the CLI prints them and exits 2)."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the command line: a message for the user, not a traceback."""


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``: an exception as a reason to record or log."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
