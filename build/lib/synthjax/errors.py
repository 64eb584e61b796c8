"""Errors a user can act on.

A `UserError` means the user gave something we cannot work with (a config
value, a path, a dataset). Entry points print its message and exit without a
traceback; everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in user input: the message names the value, what was expected and how to fix it."""


def unknown_name(kind: str, name: str, valid, key: str | None = None) -> UserError:
    """Build the error for an unknown registry name, listing the valid ones."""
    where = f" (config key {key})" if key else ""
    return UserError(f"unknown {kind} {name!r}{where}; valid: {', '.join(sorted(valid))}")
