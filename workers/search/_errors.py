"""The error of a search that cannot run."""

from __future__ import annotations

from typing import Any

from search_spaces import InputError

__all__ = ["SearchError"]


class SearchError(InputError):
    """A search that cannot run: names the JobSpec field, the value and the fix."""

    @staticmethod
    def _format(field: str, value: Any, hint: str) -> str:
        return f"{field}: {value!r}: {hint}"


class SearchStalled(RuntimeError):
    """A running search made no progress for its bound (``stall_s``): its evaluators were lost
    and none could be placed again. The message says what was waiting and what the cluster had."""
