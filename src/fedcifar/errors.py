"""Errors that reach the user as one line (the CLI prints them and exits 2)."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the command line: a message for the user, not a traceback."""
