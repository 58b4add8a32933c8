"""Errors a run reports to the user as a message (no traceback)."""

from __future__ import annotations


class RunError(RuntimeError):
    """A run cannot go on (non-finite loss, unusable checkpoint, no usable clips)."""
