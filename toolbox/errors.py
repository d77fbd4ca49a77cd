"""Errors the CLI reports to users as one sentence with exit code 2 (no traceback)."""

from __future__ import annotations


class UsageError(Exception):
    """A user error: a bad value, a missing file, an impossible combination.

    The message is one sentence that names the bad value and the fix.
    """


class CheckpointError(UsageError):
    """A checkpoint that is missing, truncated, unsafe or made for another model."""
