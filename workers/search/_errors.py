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
