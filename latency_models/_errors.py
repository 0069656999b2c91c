"""The error type of latency models: bad target definitions and unknown names."""

from __future__ import annotations

from search_spaces import InputError

__all__ = ["LatencyModelError"]


class LatencyModelError(InputError):
    """Bad user input to a latency model; names the field, the value and what is allowed."""
