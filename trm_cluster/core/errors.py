"""Errors every layer may raise to the user's loop."""

from __future__ import annotations


class UsageError(RuntimeError):
    """The loop-side API used in a way that cannot work; the message names the fix."""
